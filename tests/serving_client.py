"""A client of an exported SavedModel that knows nothing of this project: plain TensorFlow.

    python -I serving_client.py SAVED_MODEL_DIR REQUESTS.json RESULTS.json

REQUESTS.json is a list of {"signature": name, "inputs": {name: value}}; each value becomes a tensor of
the signature's dtype. RESULTS.json gets, for each request, {output name: value as a list} (strings
decoded from UTF-8), or {"error": TensorFlow's message}. gpt2_tf, keras, keras_hub
and tensorflow_text are made impossible to import, so that a hidden dependency on them fails.
"""

import json
import sys

for name in ("gpt2_tf", "keras", "keras_hub", "tensorflow_text"):
    sys.modules[name] = None

import tensorflow as tf  # noqa: E402


def plain(value):
    value = value.numpy()
    if value.dtype == object:
        return [v.decode("utf-8") for v in value.reshape(-1)]
    return value.tolist()


def main():
    folder, requests, results = sys.argv[1:]
    model = tf.saved_model.load(folder)
    answers = []
    for request in json.load(open(requests, encoding="utf-8")):
        function = model.signatures[request["signature"]]
        specs = function.structured_input_signature[1]
        inputs = {name: tf.constant(value, specs[name].dtype) for name, value in request["inputs"].items()}
        try:
            answers.append({name: plain(value) for name, value in function(**inputs).items()})
        except tf.errors.InvalidArgumentError as e:
            answers.append({"error": e.message})
    with open(results, "w", encoding="utf-8") as f:
        json.dump({"signatures": sorted(model.signatures), "answers": answers}, f, ensure_ascii=False)


if __name__ == "__main__":
    main()
