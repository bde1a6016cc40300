"""download_model.py and gpt2_tf.download, against a local HTTP server that can misbehave."""

import collections
import http.server
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
from cli_checks import frameworks_imported, snapshot

from gpt2_tf import download
from gpt2_tf.checkpoint_files import read_bundle_index
from gpt2_tf.download import FILES, BadModelDir, DownloadError, download_model, verify_model_dir
from gpt2_tf.hparams import load_hparams, model_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = "model.ckpt.data-00000-of-00001"

# What Azure answers for a blob that does not exist.
AZURE_404 = (b'\xef\xbb\xbf<?xml version="1.0" encoding="utf-8"?><Error><Code>BlobNotFound</Code>'
             b"<Message>The specified blob does not exist.</Message></Error>")


class ModelServer:
    """Serves {url path: bytes} over HTTP with Range requests, and misbehaves on demand.

    `faults[url path]` is a list of faults, one used up per request to that path:
    "404", "500", "xml200" (an XML error page with status 200), "ignore_range" (a full 200 answer to a
    Range request), "drop" (half the body, then the connection is closed), "truncate" (Content-Length
    announces more than the body), "hang" (half the body, then wait for `release`).
    """

    def __init__(self, files):
        self.files = files
        self.faults = collections.defaultdict(list)
        self.requests = []  # (path, Range header)
        self.sent = collections.Counter()  # body bytes sent, by path
        self.release = threading.Event()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                owner.requests.append((self.path, self.headers.get("Range")))
                fault = owner.faults[self.path].pop(0) if owner.faults[self.path] else None
                body = owner.files.get(self.path)
                if body is None or fault == "404":
                    return self.reply(404, AZURE_404, "application/xml")
                if fault == "500":
                    return self.reply(500, b"busy")
                if fault == "xml200":
                    return self.reply(200, AZURE_404, "application/xml")
                start, status, headers = 0, 200, {}
                if self.headers.get("Range") and fault != "ignore_range":
                    start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
                    if start >= len(body):
                        return self.reply(416, b"", headers={"Content-Range": f"bytes */{len(body)}"})
                    status = 206
                    headers["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
                payload = body[start:]
                length = len(payload) + 1000 if fault == "truncate" else len(payload)
                if fault in ("drop", "hang"):
                    payload = payload[:len(payload) // 2]
                self.reply(status, payload, headers=headers, length=length)
                if fault == "hang":
                    owner.release.wait(120)

            def reply(self, status, payload, content_type="application/octet-stream", headers=(),
                      length=None):
                # Counted before anything is sent: the client may act on the first byte it gets.
                owner.sent[self.path] += len(payload)
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload) if length is None else length))
                for key, value in dict(headers).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(payload)
                self.wfile.flush()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def reset_counts(self):
        self.requests.clear()
        self.sent.clear()

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def source(tiny_model):
    """The tiny model's folder, and its files by name."""
    models_dir, name, _ = tiny_model
    path = os.path.join(models_dir, name)
    files = {}
    for filename in FILES:
        with open(os.path.join(path, filename), "rb") as f:
            files[filename] = f.read()
    return path, files


@pytest.fixture
def server(source):
    """A server with the tiny model as 124M."""
    _, files = source
    srv = ModelServer({f"/124M/{name}": data for name, data in files.items()})
    yield srv
    srv.close()


@pytest.fixture
def fetch(server, source, tmp_path):
    """fetch(name, **overrides): download from the server into tmp_path/models, with the tiny hparams."""
    hparams = load_hparams(source[0])

    def run(name="124M", **kwargs):
        options = dict(models_dir=str(tmp_path / "models"), base_url=server.url, quiet=True,
                       hparams=hparams, retries=5, backoff=0)
        options.update(kwargs)
        return download_model(name, **options)

    return run


def assert_complete(path, source):
    """`path` holds exactly the source files and nothing else."""
    assert sorted(os.listdir(path)) == sorted(FILES)
    for filename, data in source[1].items():
        with open(os.path.join(path, filename), "rb") as f:
            assert f.read() == data, filename


def body_bytes(server, filename):
    return server.sent[f"/124M/{filename}"]


# The checkpoint index reader.

def test_read_bundle_index_matches_tensorflow(source):
    import tensorflow as tf

    path, files = source
    tensors = read_bundle_index(os.path.join(path, "model.ckpt.index"))
    reader = tf.train.load_checkpoint(os.path.join(path, "model.ckpt"))
    assert {name: shape for name, (_, shape, _, _) in tensors.items()} == reader.get_variable_to_shape_map()
    assert {dtype for dtype, _, _, _ in tensors.values()} == {tf.float32.as_datatype_enum}
    # The entries tile the data file, and each slice holds that tensor's values.
    spans = sorted((offset, size) for _, _, offset, size in tensors.values())
    assert spans[0][0] == 0 and sum(size for _, size in spans) == len(files[DATA])
    assert all(a[0] + a[1] == b[0] for a, b in zip(spans, spans[1:]))
    _, shape, offset, size = tensors["model/h1/mlp/c_fc/b"]
    value = reader.get_tensor("model/h1/mlp/c_fc/b")
    assert list(value.shape) == shape and files[DATA][offset:offset + size] == value.tobytes()


def test_read_bundle_index_rejects_other_files(source, tmp_path):
    for filename in ("hparams.json", DATA):
        with pytest.raises(ValueError, match="not a checkpoint index"):
            read_bundle_index(os.path.join(source[0], filename))
    index = source[1]["model.ckpt.index"]
    damaged = tmp_path / "damaged.index"
    damaged.write_bytes(index[:100] + b"\xff" * 200 + index[300:])
    with pytest.raises(ValueError, match="corrupt checkpoint index"):
        read_bundle_index(str(damaged))


# Whole downloads.

def test_download_fetches_the_seven_files_in_order(fetch, server, source):
    path = fetch()
    assert_complete(path, source)
    assert [p for p, _ in server.requests] == [f"/124M/{name}" for name in FILES]
    assert all(r is None for _, r in server.requests)
    assert sum(server.sent.values()) == sum(len(data) for data in source[1].values())


def test_rerun_over_a_complete_model_fetches_nothing(fetch, server, source):
    path = fetch()
    server.reset_counts()
    assert fetch() == path
    assert server.requests == []
    assert_complete(path, source)


def test_old_name_downloads_the_new_one(fetch, server, source, tmp_path, monkeypatch):
    monkeypatch.setenv("GPT2_BASE_URL", server.url)
    path = fetch("117M", base_url=None)
    assert path == str(tmp_path / "models" / "124M")
    assert os.listdir(tmp_path / "models") == ["124M"]
    assert all(p.startswith("/124M/") for p, _ in server.requests)
    assert model_dir("117M", str(tmp_path / "models")) == path
    assert_complete(path, source)


@pytest.mark.parametrize("name", ["124", "124m", "762M", "", "../124M", "124M/", "models/124M", "/tmp"])
def test_other_names_are_refused_and_nothing_is_written(fetch, server, tmp_path, name):
    with pytest.raises(DownloadError, match="valid names are 124M, 355M, 774M, 1558M") as error:
        fetch(name)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "models").exists()
    assert server.requests == []


def test_unwritable_models_dir(fetch, server, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(DownloadError, match="cannot create .*file/124M"):
        fetch(models_dir=str(tmp_path / "file"))
    assert server.requests == []


# Faults. Each ends in a complete model or a clear error; after an error, the next run completes the
# model and no byte is sent twice except where the server forced a restart.

@pytest.mark.parametrize("fault", ["drop", "truncate"])
def test_broken_transfer_is_resumed_by_a_retry(fetch, server, source, fault):
    server.faults[f"/124M/{DATA}"] = [fault]
    path = fetch()
    assert_complete(path, source)
    size = len(source[1][DATA])
    assert body_bytes(server, DATA) == size
    ranges = [r for p, r in server.requests if p == f"/124M/{DATA}"]
    assert ranges[0] is None and ranges[1] == f"bytes={size // 2 if fault == 'drop' else size}-"


@pytest.mark.parametrize("fault", ["drop", "truncate"])
def test_broken_transfer_is_resumed_by_the_next_run(fetch, server, source, tmp_path, fault):
    server.faults[f"/124M/{DATA}"] = [fault]
    url = f"{server.url}/124M/{DATA}"
    with pytest.raises(DownloadError, match=f"cannot fetch {url}: .*gave up after 0 retries"):
        fetch(retries=0)
    model = tmp_path / "models" / "124M"
    assert (model / (DATA + ".part")).exists() and not (model / DATA).exists()
    assert sorted(os.listdir(model)) == sorted(FILES[:3] + [DATA + ".part"])
    fetch()
    assert_complete(str(model), source)
    assert body_bytes(server, DATA) == len(source[1][DATA])
    assert body_bytes(server, "encoder.json") == len(source[1]["encoder.json"])


def test_server_errors_are_retried(fetch, server, source):
    server.faults["/124M/hparams.json"] = ["500", "500"]
    assert_complete(fetch(), source)
    assert [p for p, _ in server.requests].count("/124M/hparams.json") == 3


def test_server_errors_give_up_after_the_retries(fetch, server, tmp_path):
    server.faults["/124M/hparams.json"] = ["500"] * 3
    with pytest.raises(DownloadError, match="hparams.json: HTTP 500 .*gave up after 2 retries"):
        fetch(retries=2)
    assert not (tmp_path / "models" / "124M" / "hparams.json").exists()


@pytest.mark.parametrize("fault, message", [("404", "HTTP 404 Not Found"),
                                            ("xml200", r"error page \(BlobNotFound\)")])
def test_missing_file_is_an_error_and_nothing_is_kept(fetch, server, source, tmp_path, fault, message):
    server.faults["/124M/model.ckpt.index"] = [fault]
    with pytest.raises(DownloadError, match=f"{server.url}/124M/model.ckpt.index: .*{message}") as error:
        fetch()
    assert "\n" not in str(error.value)
    model = tmp_path / "models" / "124M"
    assert sorted(os.listdir(model)) == sorted(FILES[:4])
    server.reset_counts()
    assert_complete(fetch(), source)
    assert [p for p, _ in server.requests] == [f"/124M/{name}" for name in FILES[4:]]
    assert sum(server.sent.values()) == sum(len(source[1][name]) for name in FILES[4:])


def test_server_that_ignores_range_restarts_the_file(fetch, server, source, tmp_path):
    model = tmp_path / "models" / "124M"
    model.mkdir(parents=True)
    data = source[1][DATA]
    (model / (DATA + ".part")).write_bytes(b"\0" * 1000)
    server.faults[f"/124M/{DATA}"] = ["ignore_range"]
    assert_complete(fetch(), source)
    assert body_bytes(server, DATA) == len(data)


def test_complete_part_file_is_kept(fetch, server, source, tmp_path):
    model = tmp_path / "models" / "124M"
    model.mkdir(parents=True)
    (model / (DATA + ".part")).write_bytes(source[1][DATA])
    assert_complete(fetch(), source)
    assert body_bytes(server, DATA) == 0


def test_part_file_longer_than_the_file_is_restarted(fetch, server, source, tmp_path):
    model = tmp_path / "models" / "124M"
    model.mkdir(parents=True)
    (model / "vocab.bpe.part").write_bytes(source[1]["vocab.bpe"] + b"extra")
    assert_complete(fetch(), source)
    assert body_bytes(server, "vocab.bpe") == len(source[1]["vocab.bpe"])


def test_broken_file_from_an_earlier_download_is_fetched_again(fetch, server, source, tmp_path):
    path = fetch()
    with open(os.path.join(path, "hparams.json"), "wb") as f:
        f.write(AZURE_404)  # what the original downloader saved for a missing file
    server.reset_counts()
    assert_complete(fetch(), source)
    assert [p for p, _ in server.requests] == ["/124M/hparams.json"]


def test_wrong_model_on_the_server_is_an_error(fetch, server, tmp_path):
    # Without the hparams override, 124M must have the released sizes; the server has the tiny model.
    message = "124M/hparams.json: holds .*'n_embd': 32.*expected .*'n_embd': 768"
    with pytest.raises(DownloadError, match=message):
        fetch(hparams=None)
    model = tmp_path / "models" / "124M"
    assert not (model / "hparams.json").exists() and (model / DATA).exists()


# Checks of a model folder.

@pytest.fixture
def model_copy(source, tmp_path):
    path = tmp_path / "copy"
    shutil.copytree(source[0], path)
    return path


def test_verify_accepts_the_model(model_copy, source):
    assert verify_model_dir(str(model_copy), load_hparams(source[0])) == load_hparams(source[0])


@pytest.mark.parametrize("filename, change, message", [
    ("checkpoint", lambda b: b"", "does not name model.ckpt"),
    ("hparams.json", lambda b: b.replace(b'"n_layer": 2', b'"n_layer": 1'), "unexpected tensor model/h1/"),
    ("hparams.json", lambda b: b.replace(b'"n_ctx": 64', b'"n_ctx": 32'), "tensor model/wpe has .*shape"),
    ("encoder.json", lambda b: b.replace(b'"!": 0, ', b""), "not a table of tokens 0 to 50256"),
    ("vocab.bpe", lambda b: b.rsplit(b"\n", 2)[0] + b"\n", "has 49999 merges, expected 50000"),
    ("model.ckpt.index", lambda b: b[:-1], "not a checkpoint index"),
    (DATA, lambda b: b[:-4], "has 6542972 bytes, expected 6542976"),
    ("model.ckpt.meta", None, "model.ckpt.meta: missing"),
])
def test_verify_names_the_file_at_fault(model_copy, filename, change, message):
    target = model_copy / filename
    if change is None:
        target.unlink()
    else:
        target.write_bytes(change(target.read_bytes()))
    with pytest.raises(BadModelDir, match=message) as error:
        verify_model_dir(str(model_copy))
    at_fault = error.value.files
    assert filename in at_fault or filename == "hparams.json" and at_fault == ["model.ckpt.index"]


# The command line.

def run_script(*args, code=None, keep_base_url=False):
    """Run download_model.py (or `code`, with the same argv) from the repository's folder."""
    command = [sys.executable, "download_model.py"] if code is None else [sys.executable, "-c", code]
    env = {k: v for k, v in os.environ.items() if k != "GPT2_BASE_URL" or keep_base_url}
    # Ctrl-C as a terminal sends it, also where the tests run in a background job (whose shell
    # starts it with SIGINT ignored, which its children inherit).
    return subprocess.Popen(command + list(args), cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


# download_model.py with the tiny model's sizes as those of 124M, so that it checks against them.
TINY_AS_124M = ("import runpy, sys; from gpt2_tf import hparams; "
                "hparams.RELEASED['124M'] = hparams.load_hparams(sys.argv.pop(1)).to_dict(); "
                "sys.argv[0] = 'download_model.py'; runpy.run_path('download_model.py', run_name='__main__')")


# Bad usage: (arguments, with {tmp} for the test's folder, which holds the file a.txt; environment
# variables; the whole message, after "download_model.py: error: ").
VALID = "valid names are 124M, 355M, 774M, 1558M (old names 117M, 345M are accepted)"
BAD_USAGE = [
    (["745M", "--models_dir", "{tmp}/models"], {}, f"unknown model '745M'; {VALID}"),
    (["", "--models_dir", "{tmp}/models"], {}, f"unknown model ''; {VALID}"),
    (["../124M", "--models_dir", "{tmp}/models"], {}, f"unknown model '../124M'; {VALID}"),
    (["124M", "--models_dir", "{tmp}/a.txt"], {}, "--models_dir {tmp}/a.txt is a file, not a folder"),
    (["124M", "--models_dir", "{tmp}/a.txt/models"], {},
     "--models_dir {tmp}/a.txt/models: {tmp}/a.txt is a file, not a folder"),
    (["124M", "--models_dir", "{tmp}", "--base_url", "ftp://example.com/models"], {},
     "--base_url 'ftp://example.com/models' is not an http:// or https:// URL"),
    (["124M", "--models_dir", "{tmp}", "--base_url", "example.com/models"], {},
     "--base_url 'example.com/models' is not an http:// or https:// URL"),
    (["124M", "--models_dir", "{tmp}", "--base_url", "https://"], {},
     "--base_url 'https://' is not an http:// or https:// URL"),
    (["124M", "--models_dir", "{tmp}"], {"GPT2_BASE_URL": "mirror/models"},
     "GPT2_BASE_URL 'mirror/models' is not an http:// or https:// URL"),
    (["124M", "--retries", "3"], {}, "unrecognized arguments: --retries 3"),
    ([], {}, "the following arguments are required: model_name"),
]


@pytest.mark.parametrize("args, env, message", BAD_USAGE)
def test_script_refuses_bad_usage_before_any_work(tmp_path, monkeypatch, args, env, message):
    (tmp_path / "a.txt").write_text("a file")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    process = run_script(*[arg.format(tmp=tmp_path) for arg in args], keep_base_url=bool(env))
    out, err = process.communicate(timeout=30)
    assert process.returncode == 2 and out == ""
    assert "Traceback" not in err
    assert err.splitlines() == [f"download_model.py: error: {message.format(tmp=tmp_path)}"]
    assert sorted(snapshot(tmp_path)) == ["a.txt"]


def test_failed_download_leaves_no_empty_folder(fetch, server, tmp_path):
    # Nothing fetched: the folders the download made are removed, not the ones that were there.
    server.faults["/124M/checkpoint"] = ["404"]
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch(models_dir=str(tmp_path / "new" / "models"))
    assert not (tmp_path / "new").exists()
    (tmp_path / "models").mkdir()
    server.faults["/124M/checkpoint"] = ["404"]
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch()
    assert sorted(snapshot(tmp_path)) == ["models"]
    # Files fetched, or a .part file to resume from: the folder stays.
    server.faults["/124M/hparams.json"] = ["404"]
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch()
    assert sorted(os.listdir(tmp_path / "models" / "124M")) == ["checkpoint", "encoder.json"]
    shutil.rmtree(tmp_path / "models" / "124M")
    server.faults["/124M/checkpoint"] = ["drop"]
    with pytest.raises(DownloadError, match="gave up after 0 retries"):
        fetch(retries=0)
    assert os.listdir(tmp_path / "models" / "124M") == ["checkpoint.part"]


def test_script_downloads_and_checks(server, source, tmp_path):
    models = tmp_path / "models"
    process = run_script(source[0], "124M", "--models_dir", str(models), "--base_url", server.url,
                         code=TINY_AS_124M)
    out, err = process.communicate(timeout=30)
    assert (process.returncode, out, err) == (0, "", "")
    assert_complete(str(models / "124M"), source)


def test_script_interrupted_keeps_the_part_file(server, source, tmp_path):
    server.faults[f"/124M/{DATA}"] = ["hang"]
    models = tmp_path / "models"
    part = models / "124M" / (DATA + ".part")
    process = run_script(source[0], "124M", "--models_dir", str(models), "--base_url", server.url,
                         code=TINY_AS_124M)
    deadline = time.monotonic() + 60
    # Wait until the client has written all the server sent, then interrupt it.
    while not body_bytes(server, DATA) or not part.exists() or part.stat().st_size < body_bytes(server, DATA):
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    server.release.set()
    assert process.returncode == 130
    assert err.splitlines() == ["download_model.py: interrupted; run again to resume"]
    data = source[1][DATA]
    assert part.read_bytes() == data[:len(data) // 2]
    # The next run fetches the other half only.
    server.reset_counts()
    process = run_script(source[0], "124M", "--models_dir", str(models), "--base_url", server.url,
                         code=TINY_AS_124M)
    assert process.communicate(timeout=30) == ("", "") and process.returncode == 0
    assert_complete(str(models / "124M"), source)
    assert server.requests == [(f"/124M/{name}", f"bytes={len(data) // 2}-" if name == DATA else None)
                               for name in FILES[3:]]
    assert body_bytes(server, DATA) == len(data) - len(data) // 2


def test_download_module_does_not_import_tensorflow():
    assert frameworks_imported("gpt2_tf.download") == "[]"


def test_retries_back_off_and_say_so(fetch, server, monkeypatch, capsys):
    sleeps = []
    monkeypatch.setattr(download.time, "sleep", sleeps.append)
    server.faults["/124M/checkpoint"] = ["500"] * 3
    path = fetch("117M", backoff=0.5, quiet=False)
    assert sleeps == [0.5, 1.0, 2.0]
    url = f"{server.url}/124M/checkpoint"
    assert capsys.readouterr().err.splitlines() == [
        f"117M is the old name of 124M; downloading it into {path}",
        f"cannot fetch {url}: HTTP 500 Internal Server Error; retrying in 0.5 s",
        f"cannot fetch {url}: HTTP 500 Internal Server Error; retrying in 1 s",
        f"cannot fetch {url}: HTTP 500 Internal Server Error; retrying in 2 s",
    ]
