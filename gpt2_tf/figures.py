"""What the PNG views (lens.py, attention.py) share: matplotlib without a display, and fonts for the
scripts their labels hold.

matplotlib draws with DejaVu Sans, which has no Chinese, Japanese or Korean characters: they came
out as boxes, with a warning for each. `pyplot()` adds the first installed font of CJK_FONTS as a
fallback, and `drawable(text)` writes any character that no font in use has as its escape (`\\u8fd9`),
after one line on stderr that says so and which font to install. Needs matplotlib.
"""

import sys

# Fonts with the CJK characters, as their families are named on Linux, macOS and Windows.
CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans CJK JP", "Noto Sans CJK TC", "Noto Sans CJK KR", "Noto Sans SC",
             "Source Han Sans SC", "Source Han Sans CN", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei",
             "Droid Sans Fallback", "AR PL UMing CN", "AR PL UKai CN", "PingFang SC", "Hiragino Sans GB",
             "Microsoft YaHei", "SimHei", "MS Gothic", "Yu Gothic", "Malgun Gothic")

_fonts = None  # (the font families in use, the code points they draw), once pyplot() chose them
_missing = set()  # the characters already written as escapes (the note is printed once)


def pyplot():
    """matplotlib.pyplot with the Agg backend (no display), DejaVu Sans and an installed CJK font."""
    global _fonts
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    if _fonts is None:
        installed = {font.name: font.fname for font in font_manager.fontManager.ttflist}
        families = ["DejaVu Sans"] + [name for name in CJK_FONTS if name in installed][:1]
        drawn = set()
        for name in families:
            if name in installed:
                drawn |= set(FT2Font(installed[name]).get_charmap())
        _fonts = families, drawn
    plt.rcParams["font.family"] = _fonts[0]
    return plt


def drawable(text):
    """Text with every character that no font in use can draw written as its escape (after pyplot())."""
    drawn = _fonts[1]
    out = []
    for c in text:
        if ord(c) in drawn or c.isspace():
            out.append(c)
            continue
        if not _missing:
            print("note: no installed font draws some of the characters (e.g. " + repr(c) + "): they are "
                  "written as \\u escapes; install a CJK font (e.g. fonts-noto-cjk, then delete "
                  "matplotlib's font cache) to see them", file=sys.stderr)
        _missing.add(c)
        out.append(f"\\u{ord(c):04x}" if ord(c) < 0x10000 else f"\\U{ord(c):08x}")
    return "".join(out)
