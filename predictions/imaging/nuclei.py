"""Nucleus detection on hematoxylin optical density, in physical units.

The method follows the idea of QuPath's cell detection: a pixel is nuclear where its hematoxylin
OD passes an absolute threshold AND stands out from the hematoxylin background around it. Both
are needed:
- the absolute threshold (in OD, from the slide's own stain vectors) means that tissue without
  hematoxylin (eosin only, DAB only, glass) has no nuclei at all, however its pixels spread; a
  per-image threshold such as Otsu always splits an image in two, even one with nothing to split;
- the local contrast (OD above a grey-level opening of BACKGROUND_RADIUS_UM, i.e. the image with
  everything smaller than a nucleus removed) keeps a uniformly hematoxylin-tinted stroma or a
  counterstained cytoplasm from being taken for one large nucleus.
Touching nuclei are split by a watershed of the distance transform, seeded by its maxima of at
least SPLIT_PROMINENCE_UM (so the bumps of one rough nucleus do not cut it, while two overlapping
round nuclei, whose neck is narrower than their radius by well over a micrometre, are split).
Every size is in µm and µm²; the caller gives the pixel size.

Tiling. A tile is analysed with a margin (halo) around it and only the nuclei whose centroid
falls in the tile proper are kept, so that a nucleus on a tile border is found once and whole,
and the result does not depend on how the slide is cut into tiles (every filter here reaches
less than the margin).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage import morphology, segmentation


@dataclass(frozen=True)
class NucleusSettings:
    """What a nucleus is, in physical units (µm, µm², OD)."""

    mpp: float                              # µm per pixel of the analysed image
    min_area_um2: float = 10.0              # smaller: debris, noise
    max_area_um2: float = 500.0             # larger: not a nucleus (a fold, a clump of debris)
    hematoxylin_od: float = 0.2             # absolute hematoxylin OD threshold
    local_contrast_od: float = 0.08         # OD above the local background
    background_radius_um: float = 10.0      # reach of the local background estimate
    split_prominence_um: float = 0.6        # a seed must stand this far above its neck
    smoothing_um: float = 0.5               # against JPEG blocks and chromatin texture
    min_width_um: float = 2.0               # thinner objects are fibres and keratin, not nuclei
    edge_fraction: float = 0.5              # a nucleus ends where it falls to half its height
    edge_reach_um: float = 1.5              # above the background, at most this far out

    def px(self, um: float) -> float:
        return um / self.mpp

    def px2(self, um2: float) -> float:
        return um2 / self.mpp ** 2

    @property
    def reach_px(self) -> int:
        """How far (px) any filter here looks: the margin a tile needs around it."""
        largest_radius = np.sqrt(self.max_area_um2 / np.pi)
        return int(np.ceil(self.px(self.background_radius_um + 2 * largest_radius + 3 * self.smoothing_um)))


def nuclear_mask(hematoxylin: np.ndarray, settings: NucleusSettings) -> np.ndarray:
    """Boolean mask of nuclear pixels from a hematoxylin OD image.

    Cores pass both thresholds; each core is then the pixels in and around it (up to
    edge_reach_um out) that stand above the local background by at least edge_fraction of the core's own mean
    height (robust to chromatin texture): the half-maximum outline of a blurred object, so pale rims belong to their nucleus
    and nucleus sizes do not depend on how dark the nucleus is.
    """
    sigma = settings.px(settings.smoothing_um)
    hema = ndi.gaussian_filter(hematoxylin.astype(np.float32), sigma) if sigma >= 0.3 else hematoxylin
    size = 2 * int(round(settings.px(settings.background_radius_um))) + 1
    background = ndi.grey_opening(hema, size=(size, size))
    height = hema - background
    cores = (hema >= settings.hematoxylin_od) & (height >= settings.local_contrast_od)
    labels, count = ndi.label(cores)
    if count:
        peaks = np.asarray(ndi.mean(height, labels, np.arange(count + 1)), np.float32)
        peaks[0] = np.inf
        grown = segmentation.expand_labels(labels, distance=settings.px(settings.edge_reach_um))
        # The outline is the same rule inside and out: a dark nucleus is trimmed to its
        # half-height outline as a pale one is grown to it.
        mask = (grown > 0) & (height >= settings.edge_fraction * peaks[grown]) & (height >= settings.local_contrast_od)
    else:
        mask = cores
    mask = ndi.binary_opening(mask, structure=ndi.generate_binary_structure(2, 1))
    # Vesicular nuclei have pale centres: fill holes smaller than a nucleus.
    mask = morphology.remove_small_holes(mask, max_size=max(1, int(settings.px2(settings.min_area_um2))))
    return mask


def split_nuclei(mask: np.ndarray, settings: NucleusSettings) -> np.ndarray:
    """Label image of the nuclei in a nuclear mask, touching nuclei split (int32, 0 = none)."""
    if not mask.any():
        return np.zeros(mask.shape, np.int32)
    distance = ndi.distance_transform_edt(mask)
    smoothed = ndi.gaussian_filter(distance, max(0.5, settings.px(0.5)))
    seeds = morphology.h_maxima(smoothed, settings.px(settings.split_prominence_um))
    markers, count = ndi.label(seeds & mask)
    blobs, _ = ndi.label(mask)
    # A blob too small or too flat to hold a seed is still one nucleus.
    seeded = np.zeros(blobs.max() + 1, bool)
    seeded[blobs[markers > 0]] = True
    seedless = ~seeded[blobs] & (blobs > 0)
    extra, _ = ndi.label(seedless)
    markers[extra > 0] = extra[extra > 0] + count
    return segmentation.watershed(-smoothed, markers, mask=mask).astype(np.int32)


@dataclass
class Nuclei:
    """Nuclei of one image: centroids (row, col, in pixels of the image) and areas (px)."""

    centroids: np.ndarray   # N x 2 float64
    areas_px: np.ndarray    # N int
    labels: np.ndarray      # the label image (0 = background), labels 1..N in centroid order


def segment_nuclei(hematoxylin: np.ndarray, settings: NucleusSettings) -> Nuclei:
    """The nuclei of a hematoxylin OD image, filtered by area (settings)."""
    labels = split_nuclei(nuclear_mask(hematoxylin, settings), settings)
    areas = np.bincount(labels.ravel())
    keep = (areas >= settings.px2(settings.min_area_um2)) & (areas <= settings.px2(settings.max_area_um2))
    keep[0] = False
    if keep.any():
        # Half-width of each object: the largest distance from its inside to its edge.
        inner = ndi.distance_transform_edt(labels > 0)
        half_width = np.asarray(ndi.maximum(inner, labels, np.arange(areas.size)))
        keep &= half_width >= settings.px(settings.min_width_um) / 2
    ids = np.flatnonzero(keep)
    if ids.size == 0:
        return Nuclei(np.zeros((0, 2)), np.zeros(0, np.int64), np.zeros(labels.shape, np.int32))
    rows, cols = np.indices(labels.shape)
    flat = labels.ravel()
    centroids = np.stack([np.bincount(flat, rows.ravel(), minlength=areas.size)[ids],
                          np.bincount(flat, cols.ravel(), minlength=areas.size)[ids]], axis=1) / areas[ids, None]
    relabel = np.zeros(areas.size, np.int32)
    relabel[ids] = np.arange(1, ids.size + 1, dtype=np.int32)
    return Nuclei(centroids, areas[ids], relabel[labels])


def detect_nuclei(hematoxylin: np.ndarray, settings: NucleusSettings, *, core: tuple[int, int, int, int] | None = None,
                  section: np.ndarray | None = None) -> Nuclei:
    """The nuclei whose centroid lies in `core` (row0, col0, row1, col1) and on `section`.

    hematoxylin: OD image of the tile with its margin; section: boolean mask (same shape) of the
    slide's section, None for everywhere. Rows sorted by (row, col), so results are
    deterministic.
    """
    found = segment_nuclei(hematoxylin, settings)
    if len(found.areas_px) == 0:
        return found
    r, c = found.centroids[:, 0], found.centroids[:, 1]
    keep = np.ones(len(r), bool)
    if core is not None:
        r0, c0, r1, c1 = core
        keep &= (r >= r0) & (r < r1) & (c >= c0) & (c < c1)
    if section is not None:
        keep &= section[np.clip(r.astype(int), 0, section.shape[0] - 1), np.clip(c.astype(int), 0, section.shape[1] - 1)]
    order = np.lexsort((c[keep], r[keep]))
    ids = np.flatnonzero(keep)[order]
    relabel = np.zeros(len(found.areas_px) + 1, np.int32)
    relabel[ids + 1] = np.arange(1, ids.size + 1, dtype=np.int32)
    return Nuclei(found.centroids[ids], found.areas_px[ids], relabel[found.labels])
