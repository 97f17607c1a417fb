"""The pycolmap stages of ``solve``: features, matching, incremental mapping, undistortion.

Runs in a child process (``engine.solve.child``), so that a long pycolmap call can be stopped at once by ending
the process; it reports through ``report(dict)`` (progress counts, per-stage timings). It imports no torch.

Progress comes from doing the work in chunks: features for a few images per call, matching for a block of
image pairs per call (the pair list is built here, which also gives sequential matching its loop overlap: the
last frames of a video are matched with the first, closing an orbit around the object).
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import failpoints
from ..rss import peak_rss_bytes

# Images per extract_features call: a progress event every second or two on a laptop. Each call has a fixed cost
# (measured on DTU, 1600x1200: 0.80 CPU s per image in calls of 2, 0.71 in calls of 8, 0.61 in one call of 49).
FEATURE_CHUNK = 4
UNDISTORT_WORKERS = 2  # images undistorted and written at once (a laptop has at least two cores)
PAIR_CHUNK = 32  # image pairs per match_image_pairs call
SEQUENTIAL_OVERLAP = 10  # neighbours matched with each frame (as COLMAP's sequential matcher)
# The pair budget: matching costs per pair, so `auto` matches at most this many pairs per photo. Every pair while
# that fits (up to 2 * PAIRS_PER_PHOTO + 1 photos), beyond it each photo with its most similar photos
# (RETRIEVAL_NEIGHBOURS, by a vocabulary built from the set's own features) and its RETRIEVAL_SEQUENTIAL
# neighbours in name order (photos are usually named in the order they were taken). Measured on DTU 65 (49 photos,
# 2026-12-03): retrieval's 558 pairs against every pair's 1176, 16.0 + 1.8 (retrieval) instead of 27.0 CPU s of
# matching, all 49 placed, 0.148 deg median rotation error against 0.174 (the same mapping options).
PAIRS_PER_PHOTO = 20
RETRIEVAL_NEIGHBOURS = 15
RETRIEVAL_SEQUENTIAL = 5
VOCABULARY_WORDS = 256  # visual words of the vocabulary built for retrieval (a few seconds for 200 photos)
VOCABULARY_SAMPLE = 400  # descriptors per photo it is built from
RETRIEVAL_FEATURES = 2000  # features per photo indexed and queried
# SIFT on an image upsampled 2x (COLMAP's first_octave -1) finds 3-4x more features at 3-4x the cost; only
# small images need it: from this long side on, features come from the image as it is.
UPSAMPLE_BELOW_PX = 1000
MIN_SHARED_FOR_PP = 8  # photos sharing one camera before its principal point is refined
REGISTRATION_ERROR_PX = 12.0  # COLMAP's registration threshold, kept for images with this long side or larger:
REGISTRATION_REFERENCE_SIDE = 1600
REGISTRATION_ERROR_MIN_PX = 4.0  # ... and scaled down with smaller images, to this at least
STRICT_FILTER_PX = 2.0  # the strict retry drops observations over this error (COLMAP: 4 px)
# Global bundle adjustments while the model grows: one each time it has grown by this factor (COLMAP: 1.1, in
# images and in points), of at most this many iterations (Ceres' default: 50), and one refinement of each local
# one (COLMAP: 2). Measured on DTU 65 (49 photos, the same matches): mapping 9.7 instead of 12.8 CPU s, 0.171 vs
# 0.174 deg median rotation error; on big sets the global adjustments are most of the mapping time.
GLOBAL_BA_GROWTH = 1.4
GLOBAL_BA_ITERATIONS = 30
LOCAL_BA_REFINEMENTS = 1
MISPLACED_RATIO = 3.0  # an image with a mean error over this many times the median image's is misplaced
MISPLACED_MIN_IMAGES = 6  # fewer placed images give no meaningful median
# The refined principal point is kept only if the mean reprojection error does not rise by more than this factor,
# the point stays within this fraction of the image size from the centre (each axis), and the cameras turn by at
# most this many degrees (median; the bundled scene's 16 px offset turns them ~2 degrees).
PP_MAX_ERROR_RISE = 1.02
PP_MAX_OFFSET = 0.15
PP_MAX_TURN_DEG = 8.0
# The radial term is set to zero when the photos do not ask for it: a bundle adjustment without it may raise the mean
# reprojection error by at most this factor. An unneeded term trades against the focal length on an orbit around
# an object (measured on the thin scene's renders: focal 0.4-2.3 % short, the mesh as much too large, for an error
# 0.005-0.06 % lower); a lens's distortion raises it more when left out (400x300 renders warped with k1 = -0.05 /
# +0.03: 2.6 % / 0.5 %).
DISTORTION_MAX_ERROR_RISE = 1.002
# The finished model is polished on smaller photos: observations over this error (COLMAP's mapper filter, 4 px, kept
# for photos with the reference long side or larger; scaled down with smaller ones, to this at least) are dropped
# and the model adjusted again, this many times. The mapper's 4 px is 16x the mean error on 400x300 frames; at 1 px
# (measured on the bundled and thin 400x300 renders, 2026-12-04) the median camera rotation error fell from
# 0.11-0.14 to 0.06 degrees and the mean image error of the surface from 0.54-0.75 to 0.39 px.
POLISH_FILTER_PX = 4.0
POLISH_FILTER_MIN_PX = 1.0
POLISH_ROUNDS = 2
POLISH_MIN_TRIANGULATION_DEG = 1.5  # COLMAP's filter_min_tri_angle


@dataclass
class SfmJob:
    """Everything the child process needs (plain values: it is pickled across the process boundary)."""

    image_dir: str  # the working images
    work_dir: str  # database and raw models (scratch)
    out_dir: str  # receives images/ and sparse/0/ (undistorted, PINHOLE)
    names: list[str]
    focal_priors: dict[str, float]  # name -> focal in pixels (EXIF)
    matcher: str  # exhaustive | sequential | retrieval
    loop: bool  # add loop-closing pairs (video)
    camera: str  # single | grouped | per-image: what ``choose_cameras`` made of the request (for solve.json)
    groups: list[list[str]]  # names sharing one camera (intrinsics), one list per camera
    max_image_size: int
    threads: int = -1
    turned: dict[str, int] = field(default_factory=dict)  # name -> quarter turns the working image was given


def pair_budget(n_images: int) -> int:
    """The most image pairs ``auto`` matches for ``n_images`` photos: linear in the count."""
    return PAIRS_PER_PHOTO * n_images


def choose_matcher(requested: str, kind: str, n_images: int) -> str:
    """``auto``: sequential for video frames; for photos exhaustive while every pair fits the pair budget,
    retrieval beyond."""
    if requested != "auto":
        return requested
    if kind == "video":
        return "sequential"
    return "exhaustive" if n_images * (n_images - 1) // 2 <= pair_budget(n_images) else "retrieval"


def image_pairs(n: int, matcher: str, loop: bool, overlap: int = SEQUENTIAL_OVERLAP) -> list[tuple[int, int]]:
    """Index pairs (i < j) to match.

    exhaustive: every pair. sequential: each image with its ``overlap`` successors, plus successors at powers
    of two (quadratic overlap, for drift), plus, with ``loop``, the last ``overlap`` images with the first ones.
    """
    if matcher == "exhaustive":
        return [(i, j) for i in range(n) for j in range(i + 1, n)]
    pairs = set()
    for i in range(n):
        for d in range(1, overlap + 1):
            if i + d < n:
                pairs.add((i, i + d))
        d = 2 * overlap
        while i + d < n:
            pairs.add((i, i + d))
            d *= 2
    if loop and n > 2 * overlap:
        for i in range(n - overlap, n):
            for j in range(overlap):
                pairs.add((j, i))
    return sorted(pairs)


class _Clock:
    """Progress of one stage with an ETA extrapolated from the rate so far (the parent process repeats the last
    count while a long pycolmap call runs between counts: see ``engine.solve._Relay``)."""

    def __init__(self, report: Callable[[dict], None], stage: str, unit: str, total: int) -> None:
        self.report, self.stage, self.unit, self.total = report, stage, unit, total
        self.start, self.cpu_start = time.monotonic(), cpu_seconds()
        self.cpu_s = 0.0
        report({"type": "stage", "stage": stage, "total": total, "unit": unit})
        failpoints.maybe_sleep(stage, in_solve_child=True)  # sleep@<stage>: a pycolmap call holding the GIL

    def tick(self, done: int) -> None:
        elapsed = time.monotonic() - self.start
        eta = elapsed / done * (self.total - done) if done > 0 else None
        self.report({"type": "progress", "stage": self.stage, "step": done, "total": self.total, "unit": self.unit,
                     "elapsed_s": round(elapsed, 2), "eta_s": None if eta is None else round(eta, 1)})

    def close(self) -> float:
        """The stage's wall seconds; its CPU seconds (this process, all threads) are left in ``cpu_s``."""
        self.cpu_s = round(cpu_seconds() - self.cpu_start, 2)
        return round(time.monotonic() - self.start, 2)


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far, all its threads (pycolmap's included): on a shared machine
    the wall clock of a stage says more about the other processes than about the stage."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def choose_cameras(requested: str, names: list[str], sizes: list[tuple[int, int]],
                   focal_priors: list[float | None]) -> tuple[str, list[list[str]]]:
    """Which photos share one camera (intrinsics): ``(label, groups)``.

    auto: photos of the same size and EXIF focal share one (the usual case: one phone, or a video); single: all
    share one (they must have one size); per-image: each has its own. Raises ValueError for ``single`` with
    several sizes.
    """
    if requested == "per-image":
        return "per-image", [[n] for n in names]
    if requested == "single":
        if len(set(sizes)) > 1:
            raise ValueError(f"--camera single needs photos of one size; these have {len(set(sizes))} sizes "
                             "(use --camera auto)")
        return "single", [list(names)]
    groups: dict[tuple, list[str]] = {}
    for name, size, focal in zip(names, sizes, focal_priors, strict=True):
        groups.setdefault((size, focal), []).append(name)
    grouped = list(groups.values())
    label = "single" if len(grouped) == 1 else ("per-image" if len(grouped) == len(names) else "grouped")
    return label, grouped


def _set_focal_priors(pycolmap, db_path: Path, priors: dict[str, float]) -> None:
    """EXIF focal lengths become the cameras' starting focal, marked as a prior COLMAP can trust."""
    if not priors:
        return
    db = pycolmap.Database.open(str(db_path))
    try:
        for name, focal in priors.items():
            image = db.read_image_with_name(name)
            cam = db.read_camera(image.camera_id)
            params = np.array(cam.params)
            for idx in cam.focal_length_idxs():
                params[idx] = focal
            cam.params = params
            cam.has_prior_focal_length = True
            db.update_camera(cam)
    finally:
        db.close()


def import_pycolmap():
    """pycolmap, imported without letting it take SIGTERM over.

    Importing it installs glog's failure handler for SIGTERM (a stack trace on stderr, then death by the signal),
    which would replace this process's own: the engine's stop request (engine.liveness.watch: ``cancelled``, exit
    130, the pycolmap child ended) or, in the child, a quiet end when the engine stops it. The handler Python had
    before is put back (SIG_DFL in the child). Called in the main thread (signal handlers can only be set there).
    """
    import signal
    import threading

    kept = signal.getsignal(signal.SIGTERM)
    import pycolmap

    if kept is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, kept)
    return pycolmap


def run_sfm(job: SfmJob, report: Callable[[dict], None]) -> dict:
    """Features, matching, mapping and undistortion; returns counts and timings for solve.json."""
    pycolmap = import_pycolmap()

    # Seeds RANSAC and mapping. With several threads, matching's verified matches (and so the cameras, slightly)
    # still vary between runs; measured: with one matching thread they are identical, mapping being repeatable
    # for the same matches.
    pycolmap.set_random_seed(0)
    work, image_dir, out = Path(job.work_dir), Path(job.image_dir), Path(job.out_dir)
    db_path = work / "database.db"
    timings, cpu = {}, {}

    clock = _Clock(report, "features", "images", len(job.names))  # from here: reading headers is its start
    pycolmap.Database.open(str(db_path)).close()  # import_images wants the file to exist
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = "SIMPLE_RADIAL"  # one focal and one radial term: what phone photos need, stable
    for group in job.groups:  # one import per group: SINGLE mode gives each group its own camera
        pycolmap.import_images(str(db_path), str(image_dir), pycolmap.CameraMode.SINGLE, group, reader)
    _set_focal_priors(pycolmap, db_path, job.focal_priors)

    long_side = _longest_side(pycolmap, db_path)  # thresholds scale with it (extraction, mapping, polish)
    extraction = extraction_options(pycolmap, job, long_side)
    # SIFT extraction and matching on the GPU when this pycolmap was built with CUDA (the pycolmap-cuda wheels);
    # the CPU otherwise (the usual wheel). Not measured here: no CUDA build on the test machines.
    device = pycolmap.Device.cuda if pycolmap.has_cuda else pycolmap.Device.cpu
    for start in range(0, len(job.names), FEATURE_CHUNK):
        chunk = job.names[start:start + FEATURE_CHUNK]
        # The images and their cameras exist already; PER_IMAGE only stops the reader checking that a chunk has
        # one size (SINGLE would skip photos of another size than the chunk's first).
        pycolmap.extract_features(str(db_path), str(image_dir), chunk, pycolmap.CameraMode.PER_IMAGE, reader,
                                  extraction, device=device)
        clock.tick(start + len(chunk))
    timings["features_s"] = clock.close()
    cpu["features_s"] = clock.cpu_s

    if job.matcher == "retrieval":
        pairs, timings["retrieval_s"], cpu["retrieval_s"] = retrieval_pairs(pycolmap, db_path, job.names, work,
                                                                             report)
    else:
        pairs = image_pairs(len(job.names), job.matcher, job.loop)
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = job.threads
    clock = _Clock(report, "matching", "pairs", len(pairs))
    pair_file = work / "pairs.txt"
    for start in range(0, len(pairs), PAIR_CHUNK):
        chunk = pairs[start:start + PAIR_CHUNK]
        pair_file.write_text("".join(f"{job.names[i]} {job.names[j]}\n" for i, j in chunk))
        pycolmap.match_image_pairs(str(db_path), matching, pycolmap.ImportedPairingOptions(
            match_list_path=str(pair_file)), device=device)
        clock.tick(start + len(chunk))
    timings["matching_s"] = clock.close()
    cpu["matching_s"] = clock.cpu_s

    clock = _Clock(report, "mapping", "images", len(job.names))
    registered = 0

    def on_registered() -> None:
        nonlocal registered
        registered += 1
        clock.tick(min(registered, len(job.names)))

    models, model, retry = _map_checked(pycolmap, job, db_path, image_dir, work, long_side, on_registered)
    if model is None:
        timings["mapping_s"] = clock.close()
        cpu["mapping_s"] = clock.cpu_s
        return {"registered_names": [], "timings": timings, "cpu_s": cpu, "n_models": 0, "model_sizes": [],
                "n_pairs": len(pairs), "principal_point": None, "mapping_retry": retry, "peak_rss_mb": peak_rss_mb()}
    model, principal_point = _refine_principal_points(pycolmap, model, job.groups)
    model, distortion = _drop_unsupported_distortion(pycolmap, model, principal_point["refined"])
    polish = _polish(pycolmap, model, long_side, principal_point["refined"], not distortion.get("dropped", False))
    timings["mapping_s"] = clock.close()
    cpu["mapping_s"] = clock.cpu_s
    registered_names = sorted(model.images[i].name for i in model.reg_image_ids())
    stats = {
        "registered_names": registered_names,
        "n_models": len(models),
        "model_sizes": sorted((rec.num_reg_images() for rec in models.values()), reverse=True),
        "principal_point": principal_point,
        "distortion": distortion,
        "polish": polish,
        "mapping_retry": retry,
        "n_pairs": len(pairs),
        "device": device.name,
        "n_points": model.num_points3D(),
        "mean_reprojection_error_px": float(model.compute_mean_reprojection_error()),
        "mean_track_length": float(model.compute_mean_track_length()),
    }
    clock = _Clock(report, "undistorting", "images", len(registered_names))
    undistort(pycolmap, model, image_dir, out, clock.tick)
    timings["undistort_s"] = clock.close()
    cpu["undistort_s"] = clock.cpu_s
    cpu["total_s"] = round(cpu_seconds(), 2)  # the child's whole life: imports and database work included
    return {**stats, "timings": timings, "cpu_s": cpu, "peak_rss_mb": peak_rss_mb()}


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, MiB (its own, not a parent's: see ``peak_rss_bytes``)."""
    return round(peak_rss_bytes() / 2**20, 1)


def extraction_options(pycolmap, job: SfmJob, long_side: int):
    """SIFT options sized to the photos: features from the image as it is once it is large enough, from an image
    upsampled 2x below UPSAMPLE_BELOW_PX (COLMAP's default), so a 12 MP photo costs about what a 1 MP one did."""
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.max_image_size = job.max_image_size
    extraction.num_threads = job.threads
    seen = min(long_side, job.max_image_size)
    extraction.sift.first_octave = -1 if seen < UPSAMPLE_BELOW_PX else 0
    return extraction


def retrieval_pairs(pycolmap, db_path: Path, names: list[str], work: Path,
                    report: Callable[[dict], None]) -> tuple[list[tuple[int, int]], float, float]:
    """``(pairs, wall s, CPU s)``: index pairs (i < j) for a large photo set, at most ``pair_budget(len(names))``
    of them: each photo with its RETRIEVAL_NEIGHBOURS most similar photos and its RETRIEVAL_SEQUENTIAL successors
    in name order.

    Similarity is COLMAP's own image retrieval (a visual-word index with Hamming embedding, as its vocabulary-tree
    matcher uses); its vocabulary is built here from a sample of the set's own descriptors, because the
    pretrained vocabularies are downloads and a solve never reaches the network.
    """
    clock = _Clock(report, "retrieval", "images", len(names))
    rng = np.random.default_rng(0)
    db = pycolmap.Database.open(str(db_path))
    try:
        index_of = {db.read_image_with_name(name).image_id: k for k, name in enumerate(names)}
        sample = []
        for image_id in index_of:
            descriptors = np.asarray(db.read_descriptors(image_id).data)
            take = rng.choice(len(descriptors), min(len(descriptors), VOCABULARY_SAMPLE), replace=False)
            sample.append(descriptors[np.sort(take)].astype(np.float32))
        index = pycolmap.VisualIndex.create(128, 64)  # SIFT descriptors, 64-bit Hamming embedding (COLMAP's)
        build = pycolmap.VisualIndex.BuildOptions()
        build.num_visual_words = VOCABULARY_WORDS
        build.num_iterations, build.num_rounds = 11, 1
        index.build(build, pycolmap.FeatureDescriptorsFloat(pycolmap.FeatureExtractorType.SIFT,
                                                            np.concatenate(sample)))
        vocabulary = work / "vocabulary.bin"
        index.write(str(vocabulary))
        options = pycolmap.VocabTreePairingOptions()
        options.vocab_tree_path = str(vocabulary)
        options.num_images = RETRIEVAL_NEIGHBOURS + 1  # the photo itself comes back first
        options.max_num_features = RETRIEVAL_FEATURES
        generator = pycolmap.VocabTreePairGenerator(options, db)
        pairs = set()
        while not generator.has_finished():
            for a, b in generator.next():
                if a != b and a in index_of and b in index_of:
                    pairs.add(tuple(sorted((index_of[a], index_of[b]))))
            clock.tick(len({i for pair in pairs for i in pair}))
    finally:
        db.close()
    n = len(names)
    pairs.update((i, i + d) for i in range(n) for d in range(1, RETRIEVAL_SEQUENTIAL + 1) if i + d < n)
    clock.tick(n)
    return sorted(pairs), clock.close(), clock.cpu_s


def _longest_side(pycolmap, db_path: Path) -> int:
    """The longest image side among the database's cameras, pixels."""
    db = pycolmap.Database.open(str(db_path))
    try:
        return max(max(cam.width, cam.height) for cam in db.read_all_cameras())
    finally:
        db.close()


def registration_error_px(long_side: int) -> float:
    """The reprojection error, pixels, up to which a match counts as an inlier when a new image is registered.

    COLMAP's 12 px suits photos of a few thousand pixels; on small frames it is a large part of the image, enough
    for a frame to register with a wrong pose through a few chance matches and drag the frames after it along
    (measured: 1 of 40 solves of the test video, 400x300 frames, put its last 6 frames 30-60 degrees off).
    Scaled with the image, within [REGISTRATION_ERROR_MIN_PX, COLMAP's 12 px].
    """
    return _scaled_to_image(REGISTRATION_ERROR_PX, REGISTRATION_ERROR_MIN_PX, long_side)


def polish_filter_px(long_side: int) -> float:
    """The reprojection error, pixels, over which ``_polish`` drops an observation: COLMAP's 4 px on photos with the
    reference long side or larger, scaled down with smaller ones, to POLISH_FILTER_MIN_PX at least."""
    return _scaled_to_image(POLISH_FILTER_PX, POLISH_FILTER_MIN_PX, long_side)


def _scaled_to_image(reference_px: float, minimum_px: float, long_side: int) -> float:
    """A pixel threshold set for photos with the reference long side, scaled with ``long_side``, within
    [minimum_px, reference_px]."""
    return float(np.clip(reference_px * long_side / REGISTRATION_REFERENCE_SIDE, minimum_px, reference_px))


def _polish(pycolmap, model, long_side: int, refine_principal_point: bool, refine_distortion: bool) -> dict:
    """Drops the observations over ``polish_filter_px`` (and points left too short or too flat to triangulate)
    and adjusts ``model`` again (in place), POLISH_ROUNDS times; nothing on photos the mapper's own filter suits.
    Returns the report for solve.json."""
    filter_px = polish_filter_px(long_side)
    if filter_px >= POLISH_FILTER_PX:
        return {"applied": False, "filter_px": filter_px}
    before_px = float(model.compute_mean_reprojection_error())
    observations = model.compute_num_observations()
    for _ in range(POLISH_ROUNDS):
        pycolmap.ObservationManager(model).filter_all_points3D(filter_px, POLISH_MIN_TRIANGULATION_DEG)
        _bundle_adjust(pycolmap, model, refine_principal_point, refine_distortion)
    return {"applied": True, "filter_px": round(filter_px, 3), "reprojection_before_px": round(before_px, 4),
            "reprojection_after_px": round(float(model.compute_mean_reprojection_error()), 4),
            "observations_dropped": int(observations - model.compute_num_observations())}


def _mapping_options(pycolmap, job: SfmJob, long_side: int, strict: bool):
    """Incremental mapping options; ``strict`` halves the registration threshold and drops observations over
    STRICT_FILTER_PX (a second try when the first solve has misplaced images)."""
    options = pycolmap.IncrementalPipelineOptions()
    options.num_threads = job.threads
    options.random_seed = 0
    options.ba_refine_principal_point = False  # refined once the model stands (below): unstable while it grows
    options.ba_global_frames_ratio = options.ba_global_points_ratio = GLOBAL_BA_GROWTH
    options.ba_global_max_num_iterations = GLOBAL_BA_ITERATIONS
    options.ba_local_max_refinements = LOCAL_BA_REFINEMENTS
    options.mapper.random_seed = 0
    options.mapper.abs_pose_max_error = registration_error_px(long_side) / (2.0 if strict else 1.0)
    if strict:
        options.mapper.filter_max_reproj_error = STRICT_FILTER_PX
    return options


def _map(pycolmap, db_path: Path, image_dir: Path, sparse_dir: Path, options, on_registered) -> dict:
    """Incremental mapping: ``{index: Reconstruction}``, one per connected model it could build."""
    sparse_dir.mkdir(parents=True, exist_ok=True)
    return pycolmap.incremental_mapping(str(db_path), str(image_dir), str(sparse_dir), options,
                                        initial_image_pair_callback=lambda: (on_registered(), on_registered()),
                                        next_image_callback=on_registered)


def _map_checked(pycolmap, job: SfmJob, db_path: Path, image_dir: Path, work: Path, long_side: int,
                 on_registered: Callable[[], None]) -> tuple[dict, object, dict | None]:
    """``(models, best model or None, retry report or None)``: incremental mapping, and once more with stricter
    thresholds when the best model has misplaced images; the better of the two solves is kept (the retry
    reports no progress: it is a few seconds' pause at the end of the mapping stage)."""
    models = _map(pycolmap, db_path, image_dir, work / "sparse", _mapping_options(pycolmap, job, long_side, False),
                  on_registered)
    model = _best_model(models)
    misplaced = _misplaced_images(model) if model is not None else []
    if not misplaced:
        return models, model, None
    retried = _map(pycolmap, db_path, image_dir, work / "sparse_strict",
                   _mapping_options(pycolmap, job, long_side, True), lambda: None)
    candidate = _best_model(retried)
    candidate_misplaced = _misplaced_images(candidate) if candidate is not None else []
    kept = candidate is not None and _solve_score(candidate, candidate_misplaced) > _solve_score(model, misplaced)
    retry = {"misplaced": misplaced, "strict_registered": 0 if candidate is None else candidate.num_reg_images(),
             "strict_misplaced": candidate_misplaced, "kept": "strict" if kept else "first"}
    return (retried, candidate, retry) if kept else (models, model, retry)


def _best_model(models: dict):
    """The model with the most images placed (the lower mean reprojection error between equals), or None."""
    if not models:
        return None
    return max(models.values(), key=lambda rec: (rec.num_reg_images(), -rec.compute_mean_reprojection_error()))


def image_errors(model) -> dict[str, float]:
    """name -> mean reprojection error, pixels, of each placed image's own observations."""
    errors = {}
    for image_id in model.reg_image_ids():
        image = model.images[image_id]
        seen = [(p.xy, model.points3D[p.point3D_id].xyz) for p in image.points2D if p.has_point3D()]
        if not seen:
            continue
        xy, xyz = np.array([s[0] for s in seen]), np.array([s[1] for s in seen])
        cam_from_world = np.asarray(image.cam_from_world().matrix())
        projected = model.cameras[image.camera_id].img_from_cam(xyz @ cam_from_world[:, :3].T + cam_from_world[:, 3])
        errors[image.name] = float(np.linalg.norm(np.asarray(projected)[:, :2] - xy, axis=1).mean())
    return errors


def _misplaced_images(model) -> list[str]:
    """Names of placed images whose mean reprojection error is over MISPLACED_RATIO times the median image's.

    A frame registered with a wrong pose stays in the model with errors of a pixel or so (under COLMAP's
    filters), but several times those of the frames around it. Measured on 40 solves of the test video with
    COLMAP's thresholds: the 7 misplaced frames of the one bad solve had 2.4-4.3 times the median error; no image
    of the 39 good solves had over 2.4 times.
    """
    errors = image_errors(model)
    if len(errors) < MISPLACED_MIN_IMAGES:
        return []
    median = float(np.median(list(errors.values())))
    return sorted(name for name, error in errors.items() if error > MISPLACED_RATIO * median)


def _solve_score(model, misplaced: list[str]) -> tuple[int, float]:
    """Orders two solves of the same photos: more images placed and not misplaced, then the lower error."""
    return model.num_reg_images() - len(misplaced), -float(model.compute_mean_reprojection_error())


def _bundle_adjust(pycolmap, model, refine_principal_point: bool, refine_distortion: bool = True) -> None:
    """One global bundle adjustment of ``model`` (in place), through an adjuster object rather than
    ``pycolmap.bundle_adjustment``: that call sets glog's minloglevel back to 0 each time (pycolmap 4.2.1), which
    let COLMAP's INFO lines flood stderr for the rest of the solve."""
    options = pycolmap.BundleAdjustmentOptions()
    options.refine_principal_point = refine_principal_point
    options.refine_extra_params = refine_distortion
    options.print_summary = False
    config = pycolmap.BundleAdjustmentConfig()
    for image_id in model.reg_image_ids():
        config.add_image(image_id)
    config.fix_gauge(pycolmap.BundleAdjustmentGauge.TWO_CAMS_FROM_WORLD)
    pycolmap.create_default_bundle_adjuster(options, config, model).solve()
    model.update_point_3d_errors()


def _camera_poses(model) -> dict[str, np.ndarray]:
    """name -> (3, 4) camera-to-world of the registered images (COLMAP's camera axes)."""
    return {model.images[i].name: np.asarray(model.images[i].cam_from_world().inverse().matrix())
            for i in model.reg_image_ids()}


def _median_turn_deg(before: dict[str, np.ndarray], after: dict[str, np.ndarray]) -> float:
    """Median angle each camera turned between two solves of the same photos, once the frames are aligned (a
    similarity fitted on the camera centres: bundle adjustment may move the whole model)."""
    from .compare import camera_errors

    names = sorted(before)
    if len(names) < 3:
        return 0.0
    errors = camera_errors(np.stack([after[n] for n in names]), np.stack([before[n] for n in names]))
    return float(np.median(errors.rotation_deg))


def _principal_point_problem(trial, before_px: float, after_px: float, turn_deg: float) -> str | None:
    """Why the refined ``trial`` must not replace ``model``, or None. A sparse model can pay for a principal point
    far off-centre with a tilt of every camera (the two are nearly interchangeable for an orbit around an
    object); real lenses and renders keep it near the centre."""
    if after_px > before_px * PP_MAX_ERROR_RISE:
        return f"the reprojection error rose from {before_px:.3f} to {after_px:.3f} px"
    for cam in trial.cameras.values():
        cx, cy = float(cam.principal_point_x), float(cam.principal_point_y)
        off_x, off_y = abs(cx - cam.width / 2) / cam.width, abs(cy - cam.height / 2) / cam.height
        if max(off_x, off_y) > PP_MAX_OFFSET:
            return (f"the principal point moved to ({cx:.1f}, {cy:.1f}), over {PP_MAX_OFFSET:.0%} of the image "
                    f"from its centre ({cam.width / 2:.0f}, {cam.height / 2:.0f})")
    if turn_deg > PP_MAX_TURN_DEG:
        return f"the cameras turned by {turn_deg:.1f} degrees (median)"
    return None


def _refine_principal_points(pycolmap, model, groups: list[list[str]]) -> tuple[object, dict]:
    """``(model, report)``: one more global bundle adjustment that also moves the principal points, when every
    camera is shared by enough photos to pin its own down, kept only if it passes ``_principal_point_problem``.

    Renders and scans often have the principal point off-centre (the bundled scene: 16 px), and a centre held
    fixed tilts every solved camera by that angle (~2 degrees there). Refining it while the model grows makes
    incremental mapping unstable (measured: some runs of a 40-frame video ended 5-20 degrees off), so it is done
    here, on the finished model, where it only polishes; the checks guard the rare model it would bend.
    """
    before_px = float(model.compute_mean_reprojection_error())
    report = {"refined": False, "reprojection_before_px": round(before_px, 4)}
    if min(len(g) for g in groups) < MIN_SHARED_FOR_PP:
        return model, {**report, "reason": f"fewer than {MIN_SHARED_FOR_PP} photos share a camera"}
    trial = pycolmap.Reconstruction(model)
    _bundle_adjust(pycolmap, trial, refine_principal_point=True)
    after_px = float(trial.compute_mean_reprojection_error())
    turn_deg = _median_turn_deg(_camera_poses(model), _camera_poses(trial))
    report.update(reprojection_after_px=round(after_px, 4), turn_deg=round(turn_deg, 3),
                  principal_points=[[round(float(cam.principal_point_x), 2), round(float(cam.principal_point_y), 2)]
                                    for cam in trial.cameras.values()])
    problem = _principal_point_problem(trial, before_px, after_px, turn_deg)
    if problem is not None:
        return model, {**report, "reason": problem}
    return trial, {**report, "refined": True}


def _drop_unsupported_distortion(pycolmap, model, refine_principal_point: bool) -> tuple[object, dict]:
    """``(model, report)``: one more global bundle adjustment with every camera's distortion terms held at zero,
    kept when the mean reprojection error rises by at most DISTORTION_MAX_ERROR_RISE (see there): renders and
    phone photos corrected in the camera have no distortion to find, and a term fitted to noise moves the focal
    length."""
    before_px = float(model.compute_mean_reprojection_error())
    terms = [[round(float(cam.params[i]), 6) for i in cam.extra_params_idxs()] for cam in model.cameras.values()]
    report = {"dropped": False, "terms": terms, "reprojection_before_px": round(before_px, 4)}
    if not any(any(t) for t in terms):
        return model, report
    trial = pycolmap.Reconstruction(model)
    for cam in trial.cameras.values():
        params = cam.params.copy()
        params[cam.extra_params_idxs()] = 0.0
        cam.params = params
    _bundle_adjust(pycolmap, trial, refine_principal_point, refine_distortion=False)
    after_px = float(trial.compute_mean_reprojection_error())
    report["reprojection_after_px"] = round(after_px, 4)
    if after_px > before_px * DISTORTION_MAX_ERROR_RISE:
        return model, report
    return trial, {**report, "dropped": True}


def fit_to_size(camera, size: tuple[int, int]) -> tuple[tuple[float, float, float, float] | None, list[float]]:
    """``(box, params)`` that bring a PINHOLE ``camera``'s image to ``size`` with square pixels kept.

    The box (x0, y0, x1, y1, source pixels) is centred and has the target's aspect; it is scaled uniformly onto
    the target (``None``: the sizes agree, nothing to do). An undistorted photo of another camera differs by a few
    pixels, or by a uniform scale (another phone); a crop and a uniform scale keep fx = fy, where resizing to the
    target (as before) stretched each axis apart and gave the scene two pixel aspects Blender cannot show.
    """
    width, height = camera.width, camera.height
    if (width, height) == tuple(size):
        return None, list(camera.params)
    scale = max(size[0] / width, size[1] / height)
    box_w, box_h = size[0] / scale, size[1] / scale
    x0, y0 = float(np.floor((width - box_w) / 2)), float(np.floor((height - box_h) / 2))
    fx, fy, cx, cy = camera.params
    return (x0, y0, x0 + box_w, y0 + box_h), [fx * scale, fy * scale, (cx - x0) * scale, (cy - y0) * scale]


def undistort(pycolmap, model, image_dir: Path, out: Path, tick: Callable[[int], None]) -> None:
    """Writes ``out/images`` (undistorted, PINHOLE, one size, square pixels) and ``out/sparse/0`` (the model
    with those cameras, its observations moved with the pixels), UNDISTORT_WORKERS images at a time, uint8.

    The undistorted size differs between cameras (the undistorter keeps the valid pixels); the most common is
    kept, and images of other cameras are fitted to it by ``fit_to_size``. The images are written by Pillow with
    light compression: COLMAP's own writer (``undistort_images``) took 0.8 s per 2 MP PNG, Pillow 0.2 s.
    UNDISTORT_WORKERS images are under way at once (Pillow decodes and encodes without holding Python's lock:
    the two cores share a stage that used one); observations are moved in this thread, in name order.
    """
    options = pycolmap.UndistortCameraOptions()
    pinhole = {cam_id: pycolmap.undistort_camera(options, cam) for cam_id, cam in model.cameras.items()}
    image_ids = sorted(model.reg_image_ids(), key=lambda i: model.images[i].name)
    sizes = [(pinhole[model.images[i].camera_id].width, pinhole[model.images[i].camera_id].height)
             for i in image_ids]
    target = max(sorted(set(sizes)), key=sizes.count)
    fitted = {cam_id: fit_to_size(cam, target) for cam_id, cam in pinhole.items()}
    (out / "images").mkdir(parents=True, exist_ok=True)

    # what the workers need, taken from the model here: this thread moves observations in it meanwhile
    files = [(model.images[i].name, model.cameras[model.images[i].camera_id], fitted[model.images[i].camera_id][0])
             for i in image_ids]

    def write_one(file: tuple) -> None:
        name, distorted, box = file
        _undistort_file(pycolmap, options, distorted, image_dir / name, out / "images" / name, box, target)

    with ThreadPoolExecutor(UNDISTORT_WORKERS, thread_name_prefix="undistort") as pool:
        # map() keeps no image: each call writes its file and returns None, so memory holds the workers' images
        for done, (image_id, _) in enumerate(zip(image_ids, pool.map(write_one, files), strict=True), 1):
            image = model.images[image_id]
            _move_observations(pinhole[image.camera_id], model.cameras[image.camera_id], image,
                               fitted[image.camera_id][0], target)
            tick(done)
    for cam_id, cam in pinhole.items():
        cam.width, cam.height = target
        cam.params = fitted[cam_id][1]
        model.cameras[cam_id] = cam
    final = out / "sparse" / "0"
    final.mkdir(parents=True)
    model.write_binary(str(final))


def _undistort_file(pycolmap, options, distorted, source: Path, dest: Path,
                    box: tuple[float, float, float, float] | None, target: tuple[int, int]) -> None:
    """Writes the undistorted (and fitted: ``fit_to_size``'s box) image of ``source`` to ``dest``, uint8."""
    from PIL import Image

    with Image.open(source) as im:
        bitmap = pycolmap.Bitmap.from_array(np.asarray(im.convert("RGB")))
    undistorted = Image.fromarray(pycolmap.undistort_image(options, bitmap, distorted)[0].to_array())
    del bitmap
    if box is not None:
        undistorted = undistorted.resize(target, Image.Resampling.LANCZOS, box=box)
    undistorted.save(dest, compress_level=1)


def _move_observations(pinhole, distorted, image, box, target: tuple[int, int]) -> None:
    """Moves ``image``'s 2D observations from the distorted photo to the undistorted (and fitted) one."""
    points = image.points2D
    if not len(points):
        return
    xy = np.array([p.xy for p in points])
    rays = np.asarray(distorted.cam_from_img(xy))  # (N, 2) on the plane z = 1
    moved = np.asarray(pinhole.img_from_cam(np.column_stack([rays, np.ones(len(rays))])))[:, :2]
    if box is not None:
        moved = (moved - np.array(box[:2])) * (target[0] / (box[2] - box[0]))
    for point, new in zip(points, moved, strict=True):
        point.xy = new


def main(argv: list[str]) -> int:
    """Child-process entry (``python -m engine.solve.child JOB.json``): JSON lines on stdout, logs on stderr."""
    import json
    import signal
    import sys
    import traceback

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop (it ends this process)
    pycolmap = import_pycolmap()  # SIGTERM (the parent's stop) ends this process at once, without glog's trace
    failpoints.load()  # NEUS_FAILPOINTS, checked by the parent: sleep@<stage> of the pycolmap stages

    pycolmap.logging.minloglevel = 1  # warnings and errors only: INFO floods the log for every image

    def report(message: dict) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    try:
        job = SfmJob(**json.loads(Path(argv[0]).read_text()))
        report({"type": "result", **run_sfm(job, report)})
    except Exception as exc:  # reported to the parent, which turns it into the protocol's error event
        traceback.print_exc(file=sys.stderr)
        lines = str(exc).strip().splitlines()
        report({"type": "failed", "message": f"{type(exc).__name__}: {lines[-1] if lines else ''}"})
        return 1
    return 0

