"""Write the synthetic validation set: slides with known content and their truth.json.

    .venv/bin/python bench/make_validation_set.py --out /tmp/histoia-validation [--fast] [--seed 0]

Each case of predictions/imaging/synthetic.py (nuclei tiles, eosin-only tiles, H&E tiles per
eosin variant, H-DAB tiles at 0 / 10 / 50 % positivity, a 6000 x 4000 slide with tissue pieces,
a small fragment, a pen mark and dust) is written as a tiled, pyramidal, lossless TIFF that
OpenSlide opens with its pixel size; truth.json lists name, file, kind, mpp and the truth.
--fast writes the CI subset. A table of what was written is printed, with the pixel size each
file reports when opened again with OpenSlide.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from predictions.imaging import synthetic  # noqa: E402


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True,
                        help="folder to write the slides and truth.json into")
    parser.add_argument("--fast", action="store_true", help="the CI subset only")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)

    import openslide

    angles = synthetic.stain_angles()
    shown = (f"{k} {v:.1f}" for k, v in angles.items() if k != "e0-eosin")
    print("stain angles (degrees): " + ", ".join(shown))
    started = time.monotonic()
    written = synthetic.write_validation_set(args.out, fast=args.fast, seed=args.seed)
    elapsed = time.monotonic() - started

    header = (f"{'name':<20} {'kind':<10} {'file':<25} {'size':>11} {'mpp':>5} {'nuclei':>6} "
              f"{'DAB+':>7} {'weak':>6} {'mod':>6} {'strong':>6} {'tissue µm²':>12}")
    print(header)
    print("-" * len(header))
    for path, case in written:
        t = case.truth
        with openslide.OpenSlide(str(path)) as slide:   # the pixel size as read back
            mpp = slide.properties.get(openslide.PROPERTY_NAME_MPP_X)
        h, w = case.rgb.shape[:2]
        cells = [
            f"{case.name:<20}", f"{case.kind:<10}", f"{path.name:<25}", f"{f'{w}x{h}':>11}",
            f"{_fmt(float(mpp) if mpp else None, '.2f'):>5}",
            f"{_fmt(t.get('nuclei_count'), 'd'):>6}",
            f"{_fmt(t.get('dab_positive_fraction'), '.4f'):>7}",
            *(f"{_fmt(t.get(f'dab_{k}_fraction'), '.4f'):>6}" for k in ("weak", "moderate", "strong")),
            f"{_fmt(t.get('tissue_area_um2'), ',.0f'):>12}",
        ]
        print(" ".join(cells))
        if "touching_pairs" in t:
            print(f"{'':<20}   {len(t['touching_pairs'])} touching pairs (counted as 2 each)")
        if case.kind == "tissue":
            f, p = t["fragment"], t["pen_mark"]
            print(f"{'':<20}   {t['pieces']} pieces ({t['large_pieces']} large); "
                  f"fragment {f['w']}x{f['h']} px at ({f['x']}, {f['y']}), {f['area_um2']:.0f} µm²; "
                  f"pen mark {p['w']}x{p['h']} px at ({p['x']}, {p['y']}); {t['dust_specks']} dust specks")
    print(f"\n{len(written)} slides and truth.json in {args.out} ({elapsed:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
