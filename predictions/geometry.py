"""Regions of a slide as polygons: the tissue mask's outline and unions of grid tiles.

Plain Python, no Django. Polygons are handed out as lists of rings, exterior first, then its
holes; each ring a closed list of (x, y) in level-0 pixels of the slide, origin at the top-left
corner, y down (what QuPath and the viewer read). Every exterior has a positive signed area in
(x, y) and every hole a negative one (counter-clockwise / clockwise in a y-up frame, as RFC 7946
asks; QuPath accepts either), and every polygon is valid in shapely's (OGC) sense.

The geometry itself is shapely's (GEOS). Two tracings, for two kinds of region:

- the tissue mask: marching squares (skimage's find_contours) through pixel centres, as the
  outline was always drawn: smooth, few vertices once simplified, with the mask's own area.
  Tracing pixel edges instead (a union of pixel squares) would give staircases and many
  more vertices for the same area;
- grid tiles: the union of the tile squares, whose edges are the regions' true edges, so
  areas are exact.
"""

from __future__ import annotations

import numpy as np
import shapely

Ring = list[tuple[float, float]]
PolygonRings = list[Ring]   # exterior first, then holes

# Contours of the tissue mask are simplified to within this many mask pixels.
CONTOUR_TOLERANCE = 0.5


def mask_polygons(mask: np.ndarray, width: int, height: int,
                  tolerance: float = CONTOUR_TOLERANCE) -> list[PolygonRings]:
    """The tissue mask's pieces as polygons with their holes, in level-0 px (x scaled by
    width / mask columns, y by height / mask rows).

    Outlines follow the iso-line through pixel centres (marching squares,
    skimage.measure.find_contours), so a piece one pixel wide still has an area, and are then
    simplified to within `tolerance` mask px.
    """
    from skimage.measure import find_contours

    mask = np.asarray(mask, bool)
    if not mask.any():
        return []
    # The padding closes the outline of tissue that runs to the mask's edge. In mask px,
    # pixel i spans [i, i + 1) and the padded index c is pixel c - 1, whose centre is c - 0.5.
    contours = find_contours(np.pad(mask, 1).astype(np.float32), 0.5, positive_orientation="high")
    rings = [shapely.linearrings(contour[:, ::-1] - 0.5) for contour in contours if len(contour) >= 4]
    if not rings:
        return []
    rings = np.asarray(rings, dtype=object)
    # With positive_orientation="high" the outline winds around tissue with a negative signed
    # area in (x, y) (clockwise in shapely's y-up terms); around a hole it is positive.
    is_hole = shapely.is_ccw(rings)
    exteriors, holes = rings[~is_hole], rings[is_hole]
    # Marching-squares outlines never cross, so a hole lies inside exactly the pieces of tissue
    # that nest around it; the smallest of them is its own.
    pieces = shapely.polygons(exteriors)
    areas = shapely.area(pieces)
    owner: dict[int, int] = {}
    if len(holes):
        inside = shapely.STRtree(pieces).query(shapely.polygons(holes), predicate="within")
        for h, p in zip(*inside.tolist()):
            if h not in owner or areas[p] < areas[owner[h]]:
                owner[h] = p
    own_holes: list[list] = [[] for _ in exteriors]
    for h, p in sorted(owner.items()):
        own_holes[p].append(holes[h])
    polygons = np.empty(len(exteriors), dtype=object)
    polygons[:] = [shapely.Polygon(ring, own) for ring, own in zip(exteriors, own_holes)]
    if tolerance:
        # GEOS's topology-preserving Douglas-Peucker: unlike simplifying each ring on its own,
        # it never makes a ring cross itself or its holes, nor collapses a small piece.
        polygons = shapely.simplify(polygons, tolerance, preserve_topology=True)
    scale = np.array([width / mask.shape[1], height / mask.shape[0]])
    polygons = shapely.transform(polygons, lambda xy: np.clip(xy * scale, 0, [width, height]))
    return [_rings(polygon) for polygon in shapely.orient_polygons(polygons, exterior_cw=False)]


def grid_polygons(cells: np.ndarray, cell_size: float, width: int, height: int) -> list[PolygonRings]:
    """The union of the True cells of a grid (cell (r, c) spans [c, c+1) x [r, r+1) * cell_size),
    as rectilinear polygons with holes, clipped to the width x height slide.

    Cells that touch only at a corner stay in separate polygons; a hole that meets its
    exterior at a corner stays a hole touching it there (both valid).
    """
    cells = np.asarray(cells, bool)
    rows, cols = np.nonzero(cells)
    x0, y0 = cols * cell_size, rows * cell_size
    on_slide = (x0 < width) & (y0 < height)
    if not on_slide.any():
        return []
    rows, cols, x0, y0 = rows[on_slide], cols[on_slide], x0[on_slide], y0[on_slide]
    tiles = shapely.box(x0, y0, np.minimum((cols + 1) * cell_size, width), np.minimum((rows + 1) * cell_size, height))
    # Grid tiles share whole edges, corner to corner: a coverage, whose union GEOS builds by
    # dropping the shared edges, about 4x faster than a general union of overlapping shapes.
    # The union is exact (only the tiles' own corners), with a vertex on every tile corner
    # along the way: simplify(0) keeps the corners and drops those in straight runs;
    # normalize starts every ring at its top-left vertex, so the output does not depend on
    # the order GEOS visits edges.
    union = shapely.coverage_union_all(tiles)
    union = shapely.normalize(shapely.simplify(union, 0))
    union = shapely.orient_polygons(union, exterior_cw=False)
    return [_rings(polygon) for polygon in shapely.get_parts(union) if not polygon.is_empty]


def polygons_area(polygons: list[PolygonRings]) -> float:
    """The area of the polygons, holes taken off (in the square of their unit)."""
    return float(sum(shapely.Polygon(polygon[0], polygon[1:]).area for polygon in polygons))


def _rings(polygon: shapely.Polygon) -> PolygonRings:
    return [list(polygon.exterior.coords), *(list(hole.coords) for hole in polygon.interiors)]
