"""How figures are shown to people: labels for the stable metric names, values as read.

The names themselves (README, "Figures") never change; each pipeline declares its figures'
labels and units (BasePipeline.figures), and pages show the label beside the name.
"""

def label(name: str) -> str:
    """The label of a figure as its pipeline declares it (the names are shared: tissue_area_mm2
    means the same in every pipeline), else the name in words."""
    from .pipelines import installed

    for code in installed().values():
        figure = code.figure(name)
        if figure is not None:
            return figure.label_for(name)
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


def tile_distribution(code, plan, rows: list[dict]) -> dict | None:
    """The pipeline's tile value (its tile_value, when it has a plot title) over a slide's tiles,
    as a histogram for the prediction page; None when there is nothing to plot."""
    value = code.tile_value
    if value is None or not value.plot_title:
        return None
    numbers = [rec.get(value.column) for rec in code.tile_records(plan, rows)]
    plot = histogram([v for v in numbers if isinstance(v, (int, float)) and not isinstance(v, bool)])
    return {"title": value.plot_title, **plot} if plot else None


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
