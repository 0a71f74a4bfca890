"""How figures are shown to people: labels and units for the stable metric names.

The names themselves (README, "Figures") never change; pages show these labels beside them.
"""

LABELS = {
    "tissue_area_mm2": "Tissue area (mm²)",
    "tissue_area_px": "Tissue area (px)",
    "tissue_fraction": "Tissue fraction",
    "mpp_missing": "No pixel size",
    "tiles_analysed": "Tiles analysed",
    "dab_positive_fraction": "DAB-positive fraction",
    "dab_weak_fraction": "Weak fraction",
    "dab_moderate_fraction": "Moderate fraction",
    "dab_strong_fraction": "Strong fraction",
    "h_score": "H-score (0–300)",
    "nuclei_count": "Nuclei",
    "nuclei_per_mm2": "Nuclei per mm²",
    "nuclei_per_mpx": "Nuclei per Mpx",
    "nuclear_area_fraction": "Nuclear area fraction",
    "nucleus_area_um2_median": "Median nucleus area (µm²)",
    "nucleus_area_px_median": "Median nucleus area (px)",
    "tissue_pieces": "Tissue pieces",
    "stain_mismatch": "Second stain is not DAB",
    "stain_second": "Second stain (estimated)",
    "stain_dab_angle_deg": "Second stain's angle to DAB (°)",
    "stain_estimate": "Stain vectors",
}


def label(name: str) -> str:
    if name in LABELS:
        return LABELS[name]
    if name.startswith("class_fraction_"):
        return f"{name.removeprefix('class_fraction_').replace('_', ' ').capitalize()} fraction"
    return name.replace("_", " ").capitalize()


def display(value) -> str:
    """A figure as a person reads it: no float noise, yes/no for flags, a dash for none."""
    if value is None:
        return "—"
    if value is True:
        return "yes"
    if value is False:
        return "no"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


# The per-tile value plotted as a distribution on the prediction page, per pipeline.
TILE_VALUE = {
    "ihc-dab": ("DAB-positive fraction per tile",
                lambda r: (r["weak_px"] + r["moderate_px"] + r["strong_px"]) / r["tissue_px"] if r["tissue_px"] else None),
    "nuclei-density": ("Nuclei per tile", lambda r: r["nuclei"]),
}


def histogram(values: list[float], bins: int = 12) -> dict | None:
    """Counts per bin for a small bar plot; None when there is nothing to plot."""
    values = [v for v in values if v is not None]
    if len(values) < 2:
        return None
    low, high = min(values), max(values)
    if high == low:
        high = low + 1
    width = (high - low) / bins
    counts = [0] * bins
    for v in values:
        counts[min(int((v - low) / width), bins - 1)] += 1
    peak = max(counts)
    return {"low": low, "high": high, "bins": [
        {"count": c, "height": round(100 * c / peak, 1), "from": low + i * width, "to": low + (i + 1) * width}
        for i, c in enumerate(counts)]}
