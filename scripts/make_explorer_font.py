"""Make the explorer's math font: Latin Modern Math cut down to what chain rules use.

Run from anywhere (needs fontTools: pip install fonttools):

    python scripts/make_explorer_font.py

The explorer page (matgrad.viz.explore) draws each op's chain rule as MathML, and Chromium draws
MathML well only with a math font (an OpenType MATH table: stretchy brackets, big operators,
accents). The page must be one file that needs no network, so the font travels inside it, as
base64. The whole font (docs/assets/fonts/latinmodern-math.otf, 720 kB) would more than double
a typical page; this keeps the characters listed below with every glyph that the MATH table and
the layout features reach from them (larger sums and brackets, script-size variants), as WOFF,
and writes it to matgrad/viz/fonts/matgrad-math.woff.

The GUST Font License asks that a derived font carry another name: this one is "matgrad Math".
tests/test_rules.py checks that every character the rules of matgrad's ops render to is in it.
"""

from __future__ import annotations

from pathlib import Path

from fontTools import subset
from fontTools.ttLib import TTFont

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "docs" / "assets" / "fonts" / "latinmodern-math.otf"
TARGET = ROOT / "matgrad" / "viz" / "fonts" / "matgrad-math.woff"
FAMILY = "matgrad Math"

# Code points kept: ASCII; Greek; the mathematical italic letters that browsers draw a one-letter
# <mi> with; and the operators, relations, accents and brackets that rules and docs write.
CHARACTERS = (
    set(range(0x20, 0x7F))
    | {0xA0, 0xA8, 0xAC, 0xB1, 0xB7, 0xD7, 0xF7}
    | set(range(0x391, 0x3AA))
    | set(range(0x3B1, 0x3CA))
    | {0x3D1, 0x3D5, 0x3F0, 0x3F1, 0x3F5}
    | set(range(0x1D434, 0x1D468))  # italic A-Z, a-z (U+1D455, italic h, is U+210E)
    | set(range(0x1D6E2, 0x1D71C))  # italic Greek
    | {0x210E, 0x2113, 0x211D, 0x2020}
    | {0x2032, 0x2026, 0x22EF, 0x2212, 0x2213, 0x2299, 0x2295, 0x2297, 0x2218, 0x22C5, 0x22A4, 0x22A5}
    | {0x2211, 0x220F, 0x221A, 0x2202, 0x2207, 0x221E, 0x2200, 0x2203, 0x2208, 0x2227, 0x2228}
    | {0x2260, 0x2264, 0x2265, 0x2248, 0x2261, 0x2223, 0x2225, 0x2016, 0x2192, 0x2190, 0x21A6}
    | {0x27E8, 0x27E9, 0x2308, 0x2309, 0x230A, 0x230B, 0x2061, 0x2062, 0x2063, 0x2064}
    | {0x02C6, 0x02C7, 0x02C9, 0x02CA, 0x02CB, 0x02D8, 0x02D9, 0x02DC, 0x0302, 0x0303}
)


def main() -> None:
    font = TTFont(SOURCE, recalcTimestamp=False)  # the same bytes on every run
    cmap = font.getBestCmap()
    keep = sorted(c for c in CHARACTERS if c in cmap)
    options = subset.Options()
    options.layout_features = ["ssty", "dtls"]  # script-size letters, dotless i and j under accents
    options.name_IDs = ["*"]
    options.name_languages = ["*"]
    options.notdef_outline = True
    options.flavor = "woff"
    subsetter = subset.Subsetter(options)
    subsetter.populate(unicodes=keep)
    subsetter.subset(font)
    for record in font["name"].names:  # a derived font carries another name (GUST Font License)
        if record.nameID in (1, 4, 16, 21):
            record.string = FAMILY
        elif record.nameID in (3, 6, 20):
            record.string = FAMILY.replace(" ", "") + "-Regular"
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    font.save(TARGET)
    print(
        f"{TARGET.relative_to(ROOT)}: {len(keep)} characters, {font['maxp'].numGlyphs} glyphs, "
        f"{TARGET.stat().st_size / 1e3:.0f} kB"
    )


if __name__ == "__main__":
    main()
