"""The configuration schema: every key's type, default, allowed values and meaning, in one place.

OmegaConf builds the config from these dataclasses (``OmegaConf.structured``) and merges the YAML presets in
``engine/configs/`` and the user's ``--config`` / ``--set`` on top; a misspelt key or a value of the wrong type or
outside a ``Literal`` fails the merge. Minimums, schedules and other rules OmegaConf cannot express are field
metadata (``at_least``, ``positive``, ``schedule``), checked by ``engine.config.check_values``.

Adding a key is one change here: a typed field, its default and a docstring (saved runs that lack it read the
default). Removing or renaming one also adds an entry to ``RETIRED`` or ``RENAMED`` so older run folders still load.

No ``from __future__ import annotations`` here: OmegaConf reads the field types at run time.
"""

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

Preset = Literal["preview", "fast", "quality"]
DataFormat = Literal["auto", "dtu", "blender", "colmap"]
Switch = Literal["auto", True, False]
ExportFormat = Literal["ply", "obj", "glb"]
ExportFrame = Literal["normalized", "world", "metres"]
ColorSource = Literal["field", "photos"]
MeshMethod = Literal["auto", "marching_cubes", "surface_nets"]
Precision = Literal[32, 16, 64, "32", "16", "64", "bf16", "32-true", "16-true", "16-mixed", "bf16-true", "bf16-mixed",
                    "64-true"]
Activation = Literal["relu", "softplus"]
# ``solve --matcher``: which photo pairs are matched (auto: sequential for a video, exhaustive for a few photos,
# retrieval for many; engine.solve.sfm.choose_matcher). ``--camera``: which photos share intrinsics.
SolveMatcher = Literal["auto", "exhaustive", "sequential", "retrieval"]
SolveCamera = Literal["auto", "single", "per-image"]
# A number, or a schedule {start, end, start_step (default 0), end_step} interpolated linearly between the steps
# (``engine.model.scheduled``). OmegaConf cannot type "number or mapping", so check_values checks it.
Schedulable = Any

PRESETS: tuple[str, ...] = get_args(Preset)
DATA_FORMATS: tuple[str, ...] = get_args(DataFormat)
EXPORT_FORMATS: tuple[str, ...] = get_args(ExportFormat)
EXPORT_FRAMES: tuple[str, ...] = get_args(ExportFrame)
SOLVE_MATCHERS: tuple[str, ...] = get_args(SolveMatcher)
SOLVE_CAMERAS: tuple[str, ...] = get_args(SolveCamera)

# Keys that older engines wrote into a run's config.yaml: dropped (RETIRED) or moved (RENAMED) when it is loaded.
RETIRED: tuple[str, ...] = ("train.progress_interval_s",)
RENAMED: dict[str, str] = {"model.occupancy.warmup_steps": "model.occupancy.start_step"}


def at_least(low: float, default: Any) -> Any:
    """A field whose value must be >= ``low``."""
    return field(default=default, metadata={"min": low})


def between(low: float, high: float, default: Any) -> Any:
    """A field whose value must lie in [``low``, ``high``]."""
    return field(default=default, metadata={"min": low, "max": high})


def positive(default: Any) -> Any:
    """A field whose value must be > 0."""
    return field(default=default, metadata={"min": 0, "strict": True})


def schedule(default: Any, low: float | None = None) -> Any:
    """A ``Schedulable`` field (a number or a schedule), optionally >= ``low`` at every step."""
    return field(default=default, metadata={"schedule": True, "min": low})


def checked(default: Any, rule, problem: str) -> Any:
    """A field with a rule of its own: ``rule(value)`` must hold, else 'KEY must be PROBLEM'."""
    return field(default=default, metadata={"rule": rule, "problem": problem})


def section(factory) -> Any:
    """A nested section (a dataclass instance built per config)."""
    return field(default_factory=factory)


@dataclass
class RegionConfig:
    """The object's region in the dataset's WORLD frame; it becomes the unit sphere, what lies outside is
    background (``datasets.cameras.apply_region``)."""

    type: Literal["auto", "sphere", "box"] = "auto"
    """auto: derived from the cameras (and COLMAP sparse points); sphere or box: given by the keys below."""
    center: list[float] | None = None
    """[x, y, z], sphere and box."""
    radius: float | None = None
    """Sphere radius."""
    half_size: list[float] | None = None
    """[hx, hy, hz] of an axis-aligned box; the mesh is cropped to the box."""


@dataclass
class DataConfig:
    format: DataFormat = "auto"
    """Scene layout; auto detects it from the files in the data folder."""
    path: str | None = None
    """The scene folder; `fit` records it here so export and render find the photos again."""
    downscale: int = at_least(1, 1)
    """Load the images this many times smaller (fit raises it further when the photos would not fit in memory)."""
    memory_budget_gb: float = at_least(0, 0.0)
    """Memory a fit may plan to use, in GiB (host RAM on the CPU, device memory on CUDA); 0: 85 % of what the
    machine has available when the fit starts."""
    cameras_file: str | None = None
    """DTU: another cameras npz instead of cameras_sphere.npz."""
    split: str = "train"
    """NeRF-synthetic: the split to train on."""
    use_mask: Switch = "auto"
    """Train with the scene's masks; auto: when it has them."""
    holdout_every: int = at_least(0, 0)
    """>0: every k-th view is held out for validation PSNR and silhouette IoU."""
    background: Literal["auto", "white", "black", "random"] = "auto"
    """Colour behind the object when masks are used (random: a new colour per ray); auto: random with masks,
    white without."""
    region: RegionConfig = section(RegionConfig)
    """The object's region (auto, or a user sphere / box in the world frame)."""


@dataclass
class HashGridConfig:
    otype: Literal["HashGrid", "TcnnHashGrid"] = "HashGrid"
    """HashGrid (pure PyTorch); the engine switches to TcnnHashGrid (tinycudann) per ``accel.tcnn``."""
    n_levels: int = at_least(1, 16)
    """Resolution levels."""
    n_features_per_level: int = at_least(1, 2)
    """Features stored per level."""
    log2_hashmap_size: int = at_least(1, 19)
    """log2 of the table size per level."""
    base_resolution: int = at_least(1, 32)
    """Cells per axis at the coarsest level."""
    per_level_scale: float = at_least(1, 1.3195079107728942)
    """Growth of the resolution from one level to the next."""


@dataclass
class ProgressiveConfig:
    enabled: bool = True
    """Unlock the hash-grid levels gradually (coarse to fine)."""
    start_level: int = at_least(1, 4)
    """Levels active from the start."""
    start_step: int = at_least(0, 0)
    """Step from which more levels unlock."""
    update_steps: int = at_least(1, 1000)
    """Steps between unlocking one level and the next."""


@dataclass
class SDFMLPConfig:
    hidden_dim: int = at_least(1, 64)
    """Width of the hidden layers."""
    n_hidden_layers: int = at_least(0, 1)
    """Number of hidden layers."""
    sphere_init: bool = True
    """NeuS geometric init: the SDF starts as a sphere."""
    sphere_init_radius: float = positive(0.5)
    """Radius of that initial sphere (normalized frame)."""
    weight_norm: bool = True
    """Weight normalisation on every layer."""


@dataclass
class MLPConfig:
    hidden_dim: int = at_least(1, 64)
    """Width of the hidden layers."""
    n_hidden_layers: int = at_least(0, 2)
    """Number of hidden layers."""
    activation: Activation = "relu"
    """Hidden activation."""


@dataclass
class GeometryConfig:
    feature_dim: int = at_least(1, 13)
    """Features passed from the SDF network to the colour network."""
    include_xyz: bool = True
    """Feed the point's coordinates to the SDF network beside the encoding (needed by the sphere init)."""
    grad_mode: Literal["closed_form", "autograd", "finite_difference"] = "closed_form"
    """How the SDF gradient (normals, eikonal loss) is computed."""
    fd_points: Literal[4, 6] = 4
    """finite_difference: 4 (tetrahedron) or 6 (central) points."""
    fd_eps: Schedulable = schedule(0.001, low=0)
    """finite_difference step, or a shrinking schedule such as {start: 0.01, end: 0.001, end_step: 5000}."""
    encoding: HashGridConfig = section(HashGridConfig)
    """The SDF's hash grid."""
    progressive: ProgressiveConfig = section(ProgressiveConfig)
    """Coarse-to-fine unlocking of the hash-grid levels."""
    mlp: SDFMLPConfig = section(SDFMLPConfig)
    """The SDF network after the encoding."""


@dataclass
class RadianceConfig:
    sh_degree: Literal[1, 2, 3, 4] = 4
    """Spherical-harmonics bands encoding the view direction."""
    use_view_dir: bool = True
    """Colour depends on the view direction."""
    use_normal: bool = True
    """Colour depends on the surface normal."""
    mlp: MLPConfig = section(MLPConfig)
    """The colour network."""


@dataclass
class BackgroundConfig:
    enabled: Switch = "auto"
    """Learn a background beyond the foreground sphere; auto: when masks are not used."""
    n_samples: int = at_least(1, 32)
    """Background samples per ray, uniform in disparity."""
    far: float = positive(1000.0)
    """Where the background samples end (normalized frame)."""
    use_view_dir: bool = True
    """Background colour depends on the view direction."""
    start_radius: float = at_least(1, 1.0)
    """Background samples start where rays leave this sphere (x model.radius)."""
    encoding: HashGridConfig = section(lambda: HashGridConfig(n_levels=12, log2_hashmap_size=17, base_resolution=16,
                                                              per_level_scale=1.4))
    """The background's hash grid (over the contracted space)."""
    mlp: MLPConfig = section(lambda: MLPConfig(n_hidden_layers=1))
    """The background density network."""
    color_mlp: MLPConfig = section(MLPConfig)
    """The background colour network."""


@dataclass
class OccupancyConfig:
    enabled: bool = True
    """Skip empty space while marching with an occupancy grid."""
    resolution: int = at_least(1, 128)
    """Cells per axis over the bounding cube."""
    threshold: float = at_least(0, 0.001)
    """A cell stays occupied while its estimated opacity exceeds this."""
    margin: float = at_least(0, 1.5)
    """Cells within margin x half-diagonal of the zero level set stay occupied."""
    update_every: int = at_least(1, 16)
    """Steps between grid refreshes."""
    update_fraction: float = checked(1.0, lambda v: 0 < v <= 1, "in (0, 1]")
    """Share of cells re-evaluated per refresh (CPU presets use less)."""
    start_step: int = at_least(0, 256)
    """First step that refreshes (prunes) the grid; before it every cell is marched (written as ``warmup_steps``
    by older engines)."""


@dataclass
class ModelConfig:
    radius: float = positive(1.0)
    """Radius of the foreground sphere in the normalized frame (the scene is scaled to fit the unit sphere)."""
    num_samples_per_ray: int = at_least(1, 1024)
    """Marching step = sqrt(3) * 2 * radius / this."""
    sampler: Literal["packed", "static"] = "packed"
    """packed: exact sample lists (host syncs) | static: fixed-size, sync-free buffers."""
    variance_init: float = 0.3
    """Initial NeuS sharpness: inv_s = exp(10 * variance)."""
    min_inv_s: Schedulable = schedule(0.0, low=0)
    """Floor under inv_s, a number or a schedule (keeps the surface from fading into fog)."""
    cos_anneal_end: int = at_least(0, 20000)
    """Steps to anneal the cosine from relaxed to exact (0: exact from the start)."""
    sparsity_scale: float = 10.0
    """Sparsity loss: exp(-scale * |sdf|)."""
    use_nerfacc: bool = False
    """Set by the engine from ``accel.nerfacc``: nerfacc's CUDA scans for the rendering weights."""
    geometry: GeometryConfig = section(GeometryConfig)
    """The SDF field."""
    radiance: RadianceConfig = section(RadianceConfig)
    """The colour field."""
    background: BackgroundConfig = section(BackgroundConfig)
    """The learned background (NeRF++-style, contracted space)."""
    occupancy: OccupancyConfig = section(OccupancyConfig)
    """Empty-space skipping."""


@dataclass
class AccelConfig:
    tcnn: Switch = "auto"
    """tinycudann hash grid on CUDA when installed (then normals by finite differences)."""
    nerfacc: Switch = "auto"
    """nerfacc's CUDA scans for the rendering weights when installed."""


@dataclass
class LossWeights:
    rgb_l1: Schedulable = schedule(1.0, low=0)
    """L1 photometric loss."""
    rgb_mse: Schedulable = schedule(0.0, low=0)
    """Squared photometric loss."""
    eikonal: Schedulable = schedule(0.1, low=0)
    """(|grad sdf| - 1)^2 at the samples."""
    mask: Schedulable = schedule(0.1, low=0)
    """Binary cross-entropy between opacity and mask (masked training only)."""
    opaque: Schedulable = schedule(0.0, low=0)
    """Pushes each ray's opacity to 0 or 1."""
    sparsity: Schedulable = schedule(0.0, low=0)
    """exp(-scale |sdf|) at the samples; off without masks: it lets the background swallow the object."""
    curvature: Schedulable = schedule(0.0, low=0)
    """|Laplacian of the sdf| at the samples."""
    distortion: Schedulable = schedule(0.0, low=0)
    """Mip-NeRF 360 distortion of the rendering weights."""
    points: Schedulable = schedule(0.0, low=0)
    """Hinge lifting the foreground opacity to at least 0.5 on rays through the capture's sparse points
    (COLMAP-layout data without masks; engine/point_prior.py); needs the packed sampler."""
    sweep: Schedulable = schedule(0.0, low=0)
    """|sdf| where a photo-consistency sweep along wrong, nearly transparent rays finds the scene (training without
    masks; engine/photo_sweep.py, ``train.sweep``); needs the packed sampler."""


@dataclass
class SweepConfig:
    """The photo-consistency sweep behind ``train.loss.sweep`` (engine/photo_sweep.py)."""

    rays: int = at_least(1, 64)
    """Most of a step's rays swept: those rendered wrong and nearly transparent."""
    error: float = positive(0.1)
    """A ray is wrong when its render's mean absolute channel error exceeds this."""
    max_opacity: float = positive(0.5)
    """... and nearly transparent below this foreground opacity."""
    depths: int = at_least(2, 128)
    """Jittered depths per ray through the foreground sphere."""
    views: int = at_least(1, 8)
    """Training views drawn per ray to project the depths into."""
    tolerance: float = positive(0.06)
    """A projected pixel agrees with the ray's when their mean absolute channel difference is below this."""
    min_agreement: float = positive(0.5)
    """The best depth needs this share of its views to agree (and 0.3 more than the ray's median depth)."""
    peak_width: int = at_least(1, 3)
    """At most this many depths may come within 0.15 of the best's share: one clear peak, not a grazing ray."""
    scout: int = at_least(0, 128)
    """Random pixels also swept each step whatever their render, so that the kept targets cover everything the
    photos agree on (0: only the wrong rays)."""
    memory: int = at_least(0, 8192)
    """Targets kept across steps (0: a step pulls only its own)."""
    recall: int = at_least(1, 256)
    """Kept targets drawn each step; those confirmed are pulled with the step's own."""
    confirm_radius: float = positive(0.02)
    """A kept target is confirmed when ``confirm_neighbours`` others lie within this distance (normalized units)."""
    confirm_neighbours: int = at_least(0, 3)
    """Kept targets within ``confirm_radius`` that confirm one."""


@dataclass
class GuardConfig:
    bad_steps: int = at_least(1, 3)
    """Non-finite steps (loss or gradient NaN/inf; each is skipped: no update) in a row that roll the run back to
    the last good checkpoint."""
    lr_factor: float = checked(0.5, lambda v: 0 < v <= 1, "in (0, 1]")
    """Each rollback multiplies every learning rate by this."""
    max_rollbacks: int = at_least(0, 3)
    """Rollbacks allowed; one more stops the run (error kind ``diverged``, exit 1, last good checkpoint kept)."""


@dataclass
class TrainConfig:
    steps: int = at_least(1, 20000)
    """Training steps."""
    target_samples: int = at_least(1, 262144)
    """Rays per step adapt to hold this many foreground samples."""
    init_rays: int = at_least(1, 1024)
    """Rays in the first step."""
    min_rays: int = at_least(1, 256)
    """Fewest rays per step."""
    max_rays: int = at_least(1, 16384)
    """Most rays per step."""
    static_fill: float = positive(0.9)
    """model.sampler=static: rays per step aim at this share of target_samples."""
    static_adapt_every: int = at_least(1, 50)
    """model.sampler=static: steps between (asynchronous) ray-count updates."""
    lr: float = at_least(0, 0.01)
    """Learning rate of the networks."""
    lr_geometry_encoding: float = at_least(0, 0.01)
    """Learning rate of the SDF's hash grid."""
    lr_variance: float = at_least(0, 0.001)
    """Learning rate of the NeuS sharpness."""
    lr_background: float = at_least(0, 0.01)
    """Learning rate of the learned background."""
    weight_decay: float = at_least(0, 0.0)
    """AdamW weight decay."""
    warmup_steps: int = at_least(0, 500)
    """Learning-rate warm-up steps."""
    final_lr_factor: float = positive(0.1)
    """Exponential decay to lr * this at the last step."""
    loss: LossWeights = section(LossWeights)
    """Loss weights, each a number or a schedule {start, end, start_step, end_step}."""
    point_rays: int = at_least(1, 64)
    """Rays per step through the sparse points, for ``loss.points``."""
    sweep: SweepConfig = section(SweepConfig)
    """The photo-consistency sweep behind ``loss.sweep``."""
    compile: Switch = "auto"
    """torch.compile the fields; auto: on CUDA."""
    cuda_graphs: bool = False
    """With compile and model.sampler=static: CUDA graphs (mode=reduce-overhead)."""
    fused_step: bool = True
    """model.sampler=static, one process, fp32: the whole step (rays, render, losses, backward, AdamW) as one
    function of device tensors, compiled as one graph with train.compile (engine/fullstep.py)."""
    precision: Precision = 32
    """Lightning precision: 32 | bf16-mixed | ..."""
    strategy: str = "auto"
    """Lightning strategy; auto: ddp with devices > 1."""
    devices: int = at_least(1, 1)
    """CUDA: GPUs to train on; CPU: processes (gloo DDP, slower than one process: for tests); MPS: always 1."""
    val_every: int = at_least(0, 0)
    """>0: render held-out views every this many steps."""
    val_max_views: int = at_least(1, 4)
    """Held-out views rendered per validation."""
    val_downscale: int = at_least(1, 2)
    """Validation renders this many times smaller."""
    preview_every: int = at_least(0, 0)
    """>0: write a low-resolution preview mesh every this many steps."""
    preview_resolution: int = at_least(2, 64)
    """Marching-cubes resolution of the preview meshes."""
    checkpoint_every_steps: int = at_least(0, 1000)
    """>0: write checkpoints/last.ckpt every this many steps."""
    checkpoint_every_seconds: float = at_least(0, 120.0)
    """>0: and at least this often (seconds)."""
    guard: GuardConfig = section(GuardConfig)
    """What happens when training produces non-finite losses or gradients (PROTOCOL.md, Faults)."""


@dataclass
class ExportConfig:
    resolution: int = at_least(2, 512)
    """Marching-cubes grid cells per axis."""
    coarse_resolution: int = at_least(0, 128)
    """>0: a coarse pass at this resolution finds the cells that need the fine one."""
    method: MeshMethod = "auto"
    """marching_cubes (PyMCubes, CPU) | surface_nets (on the device) | auto: surface nets on CUDA."""
    chunk: int = at_least(1, 262144)
    """Points per SDF query (at most 32768 off CUDA, so that a cancel waits for one short call)."""
    color: ColorSource = "photos"
    """photos (the training images, blended per point; the field where none sees it; default since it measured
    sharper on held-out views, BENCHMARKS.md) | field (albedo: radiance seen head-on)."""
    color_views: int = at_least(1, 64)
    """Photo colours: at most this many training views colour the mesh and its texture, spread evenly over the
    directions they look from (``engine.mesh.photo.spread_views``), so a capture of hundreds of photos colours in
    bounded time and memory (each view holds a depth and a feather map while colouring)."""
    texture: bool = False
    """Also write a UV-unwrapped, baked texture (OBJ + GLB)."""
    texture_size: int = between(16, 16384, 2048)
    """Texture width and height in pixels (16384: the largest texture GPUs and glTF viewers commonly load)."""
    decimate: int = checked(0, lambda v: v == 0 or v >= 4, "0 (keep every face) or >= 4")
    """Target face count before unwrapping (0: keep)."""
    faces: int = checked(0, lambda v: v == 0 or v >= 4, "0 (off) or >= 4")
    """Game-ready: decimate the textured mesh to this many faces and bake a normal map from the full mesh (0: off)."""
    texture_faces: int = at_least(4, 50000)
    """Faces of the textured mesh when ``faces`` is 0: decimated so xatlas cuts few, large UV charts (the dense
    marching-cubes mesh falls apart into thousands of tiny ones); its colours still come from the full mesh."""
    texture_refine: bool = False
    """Fit the baked texture to the training photos: the textured mesh rasterised from each training camera, its
    texels optimised (Adam, from the photo blend) so the asset reproduces the photos (engine/mesh/texture_refine.py;
    measured sharper on held-out views, BENCHMARKS.md). Off: the blend alone, seconds faster."""
    photo_level: bool = True
    """Extract the surface at the SDF level where the photos place it rather than at 0: the median SDF at the
    photo-consistent depths of 16384 random training pixels (``engine.photo_sweep.photo_surface_level``, the sweep's
    settings in ``train.sweep``). A trained field's zero level sits up to a few thousandths of the radius inside or
    outside that, differently in every run; measured closer to the ground truth on 19 of 23 runs of a thin-part
    scene (mean Chamfer 0.640 -> 0.566 % of the radius, worst 1.467 -> 1.465), on 2 of 4 photos-alone runs of the
    bundled scene (0.90 -> 0.92 %; BENCHMARKS.md, tenth session). Off, or too little texture to say: level 0."""
    silhouette_fit: bool = True
    """Textured mesh: move it along its normals by the offset (quarter-pixel steps, up to 3 pixels) at which it
    best reproduces the training photos inside their masks (masked PSNR on 8 training views; the marching-cubes
    surface sits a fraction of a pixel inside the masks' edges). Needs masks; measured better on held-out views of
    three scenes (BENCHMARKS.md, 2026-12-03 fidelity)."""
    silhouette_refine: bool = True
    """Textured mesh: then move each vertex of the outline onto the training views' mask edges, the rest of the
    surface following as a sheet (engine/mesh/silhouette.py; at most 0.75 or 1.5 pixels, whichever the training
    views score better, or not at all). Needs masks; measured +3.5 dB on the bundled scene's held-out views and +3.4
    on a thin-part scene, +0.1 on fine patterns and DTU 65 (BENCHMARKS.md, 2026-12-04 fourth session)."""
    fidelity: bool = True
    """After texturing, render the asset unlit from the run's held-out views (else every 8th view) and compare it
    with the photos (masked PSNR): ``done``'s ``fidelity`` and ``fidelity.json``. A few rasterised views: seconds."""
    texture_refine_steps: int = at_least(0, 60)
    """Optimisation steps of the texel fit at most."""
    texture_refine_s: float = at_least(0, 20.0)
    """Time budget of the texel fit in seconds (the steps done by then are kept)."""
    formats: list[ExportFormat] = field(default_factory=lambda: ["ply"])
    """Extra formats beside mesh.ply: obj, glb."""
    frame: ExportFrame = "normalized"
    """normalized (object in the unit sphere) | world (the dataset's frame; also writes *_world files) | metres
    (the world frame in metres from the dataset's known distance, scale.json; also writes *_metres files)."""
    clean: bool = True
    """Drop disconnected crumbs (``engine.mesh.extract.clean_mesh``: a thin part standing free of the body is kept)
    and pieces outside the masks' visual hull."""


@dataclass
class SolveConfig:
    """``solve``'s settings (its command-line flags; ``fit`` on photos solves with the defaults). Not part of a run's
    config.yaml: a solve writes its own record, solve.json."""

    matcher: SolveMatcher = "auto"
    """Which photo pairs are matched: auto (sequential for a video, exhaustive for a few photos, retrieval for many),
    exhaustive, sequential or retrieval."""
    max_image_size: int = at_least(200, 1200)
    """Long side SIFT sees, pixels (smaller finds too few features): a laptop solves 50 photos in about a minute."""
    camera: SolveCamera = "auto"
    """Which photos share intrinsics: auto (one camera per image size and EXIF focal), single or per-image."""
    fps: float = positive(2.0)
    """Video: frames kept per second of video (the sharpest of each window)."""
    max_frames: int = at_least(3, 120)
    """Video: at most this many frames (the window widens for long videos)."""
    min_placed: float = between(0, 1, 0.5)
    """Fewer photos placed than this fraction of those solved from is an error."""
    known_distance: str | None = None
    """"IMG_A,IMG_B,METRES": the distance in metres between the cameras of two photos (true scale, scale.json)."""


@dataclass
class RunConfig:
    seed: int = 42
    """Random seed."""
    device: str = "auto"
    """auto | cpu | cuda | cuda:N | mps."""
    preset: Preset = "preview"
    """The preset the config was built from (recorded by `fit`)."""
    data: DataConfig = section(DataConfig)
    """The scene."""
    model: ModelConfig = section(ModelConfig)
    """The NeuS model."""
    accel: AccelConfig = section(AccelConfig)
    """Optional CUDA accelerators."""
    train: TrainConfig = section(TrainConfig)
    """The optimisation."""
    export: ExportConfig = section(ExportConfig)
    """Mesh extraction and files."""

