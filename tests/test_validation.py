"""Validation against ground truth, in CI: the --fast set of bench/validate.py through real workers.

The synthetic slides of predictions/imaging/synthetic.py (separated and touching nuclei,
eosin-only tissue, H&E, H-DAB at 0 / 10 / 50 % positivity, a slide with tissue pieces, a small
fragment, a pen mark and dust) and the real CMU H&E slide are imported into one experiment from
the lab share, stain undeclared; one prediction per pipeline runs over its slides on the real
cpu and gpu workers, then nuclei-density and ihc-dab again at tile_size 256 on hdab_50. Every
row of the table (bench/validation_table.py: the same tolerances and comparisons as the bench)
must pass; the table is written to test-artifacts/validation-fast.md.
"""

import sys

import pytest

from tests.conftest import ARTIFACTS, REPO

sys.path.insert(0, str(REPO / "bench"))

import validate as bench_validate  # noqa: E402
import validation_table as vt  # noqa: E402

pytestmark = pytest.mark.worker


def test_fast_validation_set_within_tolerances(workers, pipelines, demo_model, share, experiment, alice):
    cases = bench_validate.write_set(share, fast=True)
    assert experiment.stain == ""  # undeclared: each slide's stains are estimated
    slides = bench_validate.import_slides(experiment, alice, {c[0]: c[3] for c in cases}, timeout=120)
    tiling = bench_validate.TILING_CASES_FAST
    rows, info = bench_validate.run_validation(experiment, alice, slides, cases, tiling, timeout=240,
                                               log=lambda _: None)
    table = vt.text_table(rows)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "validation-fast.md").write_text(vt.markdown_table(rows) + "\n")

    assert {i["status"] for i in info.values()} == {"succeeded"}, f"{info}\n{table}"
    # Every check the set calls for has its row (none silently missing).
    checks = {(r.case, r.check) for r in rows}
    expected = {
        ("nuclei_sparse", "nuclei_separated"), ("nuclei_touching", "nuclei_touching"),
        ("eosin_only_e0", "nuclei_none"), ("he_e1", "nuclei_separated"),
        *((f"hdab_{p}", "nuclei_separated") for p in (0, 10, 50)),
        *((f"hdab_{p}", "dab_positive_fraction") for p in (0, 10, 50)),
        *((c, "no_dab_on_he") for c in ("nuclei_sparse", "nuclei_touching", "eosin_only_e0", "he_e1",
                                        "tissue_fragments", bench_validate.CMU_CASE)),
        ("tissue_fragments", "tissue_area"), ("tissue_fragments", "tissue_pieces"),
        ("tissue_fragments", "fragment_found"), ("tissue_fragments", "pen_mark_excluded"),
        ("tissue_fragments", "class_fractions_sum"), (bench_validate.CMU_CASE, "class_fractions_sum"),
    }
    assert expected <= checks, f"missing rows: {sorted(expected - checks)}\n{table}"
    tiling_rows = [r for r in rows if r.check == "tiling"]
    assert len(tiling_rows) == len(tiling) * sum(len(f) for f in vt.TILING_FIGURES.values()), table

    failed = vt.failures(rows)
    assert not failed, (f"{len(failed)} row(s) out of tolerance:\n"
                        + "\n".join(f"  {r.describe()}" for r in failed) + f"\n\n{table}")
