"""The settings of each stage, one frozen dataclass per kind of job (TRL's `SFTConfig` style)."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from layerprune.config.settings.fields import MISSING, StageSettings, borrow, setting  # noqa: F401 - MISSING re-exported
from layerprune.registry import (
    BIGBENCH_INDEX,
    BIGBENCH_SHA256,
    RECOVERIES,
    TRAINERS,
    methods_where,
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Seeded(StageSettings):
    seed: int = setting(
        0,
        help="every random choice is seeded from this (numpy takes it: below 2**32)",
        config="seed",
        schema={"minimum": 0, "maximum": 2**32 - 1},
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class OnModel(StageSettings):
    dtype: str = setting(
        "auto",
        help="weights dtype; auto = bf16 on a GPU that computes it natively (compute capability >= 8.0), else fp32",
        choices=("auto", "float32", "bfloat16", "float16"),
        config="dtype",
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class PromptSetSettings(Seeded):
    """prepare_prompts: draw the SGR prompt set (with the reference answers of `data` recovery)."""

    SECTION: ClassVar[str] = "prompts"
    source: str = setting(
        "builtin",
        help=(
            "builtin: tasks the project builds from installed packages (builtin_tasks; docs/data.md); bigbench: "
            "BIG-bench tasks in bigbench_tasks (needs the bigbench sdist: `bigbench.sdist`); hub: a `datasets` hub "
            "id, a `Dataset.save_to_disk` directory or a local .json/.jsonl/.csv/.parquet file at `path`; jsonl: a "
            "plain local JSONL at `path`; magpie: no dataset, the dense model writes the user turns itself (no "
            "reference answers, so no `data` recovery)"
        ),
        choices=("builtin", "bigbench", "hub", "jsonl", "magpie"),
    )
    builtin_tasks: list[str] = setting(
        [
            "arithmetic/1_digit_division",
            "arithmetic/2_digit_addition",
            "arithmetic/2_digit_subtraction",
            "past_tense",
            "word_unscrambling",
        ],
        help="source builtin: the project's tasks whose inputs and answers form the prompt set",
        schema={"$ref": "#/$defs/builtin_tasks"},
    )
    bigbench_tasks: list[str] | None = setting(
        None, help="source bigbench: BIG-bench tasks", schema={"$ref": "#/$defs/bigbench_tasks"}
    )
    path: str | None = setting(
        None, help="source hub: hub id (e.g. tatsu-lab/alpaca), save_to_disk directory or data file; jsonl: file"
    )
    name: str | None = setting(None, help="source hub: the dataset's config name")
    split: str = setting("train", help="source hub: the split to draw from")
    prompt_fields: list[str] = setting(
        ["instruction", "input"],
        help="source hub/jsonl: fields joined (non-empty ones, by `separator`) into the user turn",
        schema={"minItems": 1},
    )
    response_field: str | None = setting(
        "output", help="source hub/jsonl: the dataset's own answer; null = none (then no `data` recovery)"
    )
    separator: str = setting("\n\n", help="between the joined prompt fields")
    num_prompts: int = setting(
        1000,
        help="prompts drawn (seeded); magpie - distinct questions to generate",
        # Alpaca holds 52k prompts, Dolly 15k; more than any instruction set holds fails only after selfgen.
        schema={"minimum": 1, "maximum": 100_000},
    )
    system_prompt: str | None = setting(
        None, help="prepended to every prompt; null keeps the chat template's own default"
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class BigbenchSourceSettings(StageSettings):
    """fetch_bigbench: where the BIG-bench sdist comes from (only studies that name BIG-bench tasks read it)."""

    SECTION: ClassVar[str] = "bigbench"
    sdist: str | None = setting(
        None,
        help=(
            "a local copy of bigbench-1.0.0.tar.gz (checked against sha256); null = the user cache "
            "($LAYERPRUNE_CACHE), else a download from index_url, which the package index now refuses"
        ),
    )
    sha256: str = setting(BIGBENCH_SHA256, help="the sdist's expected sha256", schema={"pattern": "^[0-9a-f]{64}$"})
    index_url: str = setting(
        BIGBENCH_INDEX, help="the PEP 691 simple index page listing the sdist (a mirror of your own)"
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class PromptFilterSettings(StageSettings):
    """filter_prompts: cut the prompt set to what fits one model's token limit."""

    SECTION: ClassVar[str] = "prompts"
    max_prompt_tokens: int | None = setting(
        None,
        help=(
            "drop prompts whose chat-template rendering is longer than this many of the dense model's tokens "
            "(per model, counts in results/shared/filtered/<fingerprint>/{model}.stats.json); null keeps all"
        ),
        schema={"minimum": 1},
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class SelfgenSettings(Seeded, OnModel):
    """selfgen: the dense model answers the prompt set (SGR)."""

    SECTION: ClassVar[str] = "selfgen"
    max_new_tokens: int = setting(512, help="longest response", schema={"minimum": 1})
    temperature: float = setting(0.7, help="0 = greedy", schema={"minimum": 0})
    top_p: float = setting(0.95, help="nucleus sampling", schema={"exclusiveMinimum": 0, "maximum": 1})
    batch_size: int = setting(16, help="prompts per length-sorted batch", schema={"minimum": 1})
    max_batch_tokens: int | None = setting(
        None,
        help=(
            "at most this many tokens per batch: rows x (its longest prompt + max_new_tokens), the KV cache a "
            "batch fills; null = batch_size alone"
        ),
        schema={"minimum": 1},
    )
    backend: str = setting(
        "auto",
        help=(
            "auto = vLLM when it is installed (extra `vllm`) and a CUDA GPU is present, else transformers; "
            "vllm without either is an error"
        ),
        choices=("auto", "transformers", "vllm"),
    )
    drop_empty: bool = setting(False, help="drop empty responses (always counted in the stats)")
    drop_truncated: bool = setting(
        False, help="drop responses that hit max_new_tokens without an end of turn (always counted)"
    )
    max_model_len: int | None = setting(
        None,
        help=(
            "vLLM: longest prompt + response in tokens, which sizes its KV cache (null = the model config's: "
            "131072 for Llama-3.1, more than a 24-40 GB GPU holds)"
        ),
        schema={"minimum": 1},
    )
    gpu_memory_utilization: float = setting(
        0.9,
        help="vLLM: share of the GPU's memory it takes (weights + KV cache)",
        schema={"exclusiveMinimum": 0, "maximum": 1},
    )
    tensor_parallel_size: int = setting(
        1,
        help="vLLM: GPUs the model is split over (give the selfgen job as many: resources.selfgen.gpus)",
        schema={"minimum": 1},
    )
    batch_invariant: bool = setting(
        True,
        help=(
            "vLLM: batch-invariant kernels (VLLM_BATCH_INVARIANT=1, NVIDIA compute capability >= 8.0), so a resumed "
            "run writes what an uninterrupted one would; false = faster, a resumed run's answers may differ"
        ),
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class MagpieSettings(Seeded, OnModel):
    """magpie_prompts: prompt-free SGR, the dense model samples its own user turns."""

    SECTION: ClassVar[str] = "prompts.magpie"
    max_new_tokens: int = setting(128, help="longest question", schema={"minimum": 1})
    temperature: float = setting(1.0, help="sampling temperature of the questions", schema={"minimum": 0})
    top_p: float = setting(1.0, help="nucleus sampling", schema={"exclusiveMinimum": 0, "maximum": 1})
    batch_size: int = setting(16, help="questions sampled per batch", schema={"minimum": 1})
    dedup_threshold: float = setting(
        0.7,
        help="word-shingle Jaccard similarity at or above which a question is a near-duplicate",
        schema={"exclusiveMinimum": 0, "maximum": 1},
    )
    ngram: int = setting(3, help="words per shingle", schema={"minimum": 1})
    max_candidates: int | None = setting(
        None, help="stop sampling after this many candidates (null = 4 x num_prompts)", schema={"minimum": 1}
    )
    num_prompts: int = borrow(PromptSetSettings, "num_prompts")
    system_prompt: str | None = borrow(PromptSetSettings, "system_prompt")
    max_prompt_tokens: int | None = borrow(PromptFilterSettings, "max_prompt_tokens")
    backend: str = borrow(SelfgenSettings, "backend")
    max_model_len: int | None = borrow(SelfgenSettings, "max_model_len")
    gpu_memory_utilization: float = borrow(SelfgenSettings, "gpu_memory_utilization")
    tensor_parallel_size: int = borrow(SelfgenSettings, "tensor_parallel_size")
    batch_invariant: bool = borrow(SelfgenSettings, "batch_invariant")


@dataclasses.dataclass(frozen=True, kw_only=True)
class CalibrationSettings(Seeded):
    """prepare_calibration: the texts the calibrated scoring methods read."""

    SECTION: ClassVar[str] = "scoring.calibration"
    builtin_tasks: list[str] = setting(
        ["python_docs"],
        help="source builtin: the project's text tasks the texts come from (python_docs: English prose)",
        schema={"$ref": "#/$defs/builtin_tasks"},
    )
    bigbench_tasks: list[str] = setting(
        ["gem/xsum"],
        help="source bigbench: BIG-bench tasks the texts come from",
        schema={"$ref": "#/$defs/bigbench_tasks"},
    )
    num_samples: int = setting(128, help="texts drawn (seeded)", schema={"minimum": 1})
    source: str = setting(
        "builtin",
        help=(
            "builtin = the texts of builtin_tasks, drawn with the seed; bigbench = inputs and answers of "
            "bigbench_tasks, drawn with the seed (needs `bigbench.sdist`); gsm8k = the paper authors' BI "
            "texts (analysis/cossim_analysis.ipynb): the first num_samples GSM8K rows of `split` (their test split), "
            "in order, each question with its worked solution in lm-eval's Llama-style GSM8K wording; "
            "text = a local file at `path`: one text per line (.txt), or JSONL with a `text` field, drawn with the seed"
        ),
        choices=("builtin", "bigbench", "gsm8k", "text"),
    )
    path: str = setting(
        "openai/gsm8k",
        help=(
            "source gsm8k: a hub id (config `main`) or a local file in GSM8K's format (Parquet, JSON, JSONL); "
            "source text: the local file"
        ),
    )
    split: str = setting("test", help="source gsm8k: the split read (the authors': test)")


HEAL_SOURCE_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "oneOf": [
        {"required": ["builtin_tasks"]},
        {"required": ["bigbench_tasks"]},
        {"required": ["path"]},
        {"required": ["hub"]},
    ],
    "properties": {
        "builtin_tasks": {
            "$ref": "#/$defs/builtin_tasks",
            "description": "the project's text tasks (python_docs: prose of the Python language reference)",
        },
        "bigbench_tasks": {
            "$ref": "#/$defs/bigbench_tasks",
            "description": (
                "BIG-bench tasks whose `field` is the text; gem/wikilingua_en = 1001 English WikiHow articles, "
                "disjoint from the evaluated tasks and the gem/xsum calibration set"
            ),
        },
        "field": {"type": "string", "default": "input", "description": "the example field holding the text"},
        "path": {"type": "string", "description": "a local .txt (documents split at blank lines) or .jsonl with text"},
        "hub": {"type": "string", "description": "datasets.load_dataset name, or a directory from save_to_disk"},
        "name": {"type": ["string", "null"], "default": None, "description": "the hub dataset's config name"},
        "split": {"type": "string", "default": "train"},
        "text_field": {"type": "string", "default": "text"},
    },
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class HealSettings(Seeded):
    """prepare_heal: the plain text of the `heal` recovery (LM loss)."""

    SECTION: ClassVar[str] = "recovery.heal"
    source: dict = setting(
        # with the source's own defaults filled in, as the config's are: a job by hand passes what the rule passes
        {
            **{k: v["default"] for k, v in HEAL_SOURCE_SCHEMA["properties"].items() if "default" in v},
            "builtin_tasks": ["python_docs"],
        },
        help="exactly one of builtin_tasks (built from installed packages), bigbench_tasks (needs the bigbench "
        "sdist), path, hub",
        schema=HEAL_SOURCE_SCHEMA,
    )
    num_texts: int = setting(64, help="texts drawn (seeded) from the source", schema={"minimum": 1})


CALIBRATED = methods_where("calibrated")
CHUNKED = methods_where("chunked")
PROBED = methods_where("probes")
STOP_AT_MAX_RATIO = methods_where("stops_at_max_ratio")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScoreSettings(Seeded, OnModel):
    """score / score_iterative: rank the decoder layers. A method's job gets only the settings it uses."""

    SECTION: ClassVar[str] = "scoring"
    batch_size: int = setting(8, help="texts (or probe requests) per forward pass", schema={"minimum": 1})
    max_length: int = setting(
        256,
        help="calibration texts are cut to this many tokens",
        config="scoring.calibration.max_length",
        schema={"minimum": 8},
        methods=CALIBRATED,
    )
    calibration_average: str = setting(
        "token",
        help=(
            "bi, angular: token = the mean cosine over every calibration token (long texts weigh more); text = the "
            "mean over texts of each text's mean over its tokens (the paper authors' BI)"
        ),
        choices=("token", "text"),
        config="scoring.calibration.average",
        methods=("bi", "angular", "angular_last"),
    )
    chunk_size: int | None = setting(
        64,
        help=(
            "ppl, sleb: calibration texts whose per-layer inputs are cached at once (memory ~ chunk_size x max_length "
            "x hidden x layers); null caches all. sleb keeps a single chunk's cache across rounds."
        ),
        schema={"minimum": 1},
        methods=CHUNKED,
    )
    sleb_exclude_ends: bool = setting(
        True, help="sleb never removes the first or the last decoder layer", methods=("sleb",)
    )
    num_samples: int = setting(
        16,
        help="iterative: the first num_samples samples of each probe task",
        config="scoring.iterative.num_samples",
        schema={"minimum": 1},
        methods=PROBED,
    )
    max_ratio: float | None = setting(
        None,
        help="iterative, sleb: rounds up to round(max_ratio * L) (sleb without it: every round); the largest ratio",
        derived=True,
        methods=STOP_AT_MAX_RATIO,
    )
    probe_batch_size: int | None = setting(
        None,
        help=(
            "iterative: prompts per generation batch of the generative probes (null = batch_size). Decoding at 7-8B "
            "is bound by reading the weights, so a step of 100 rows costs about what a step of 8 does: one batch per "
            "probe cuts the search's time by the number of batches (bench/cost_model.py)"
        ),
        config="scoring.iterative.probe_batch_size",
        schema={"minimum": 1},
        methods=PROBED,
    )
    probe_max_new_tokens: list[int] = setting(
        [16], help="iterative: max_new_tokens of each probe task (or one for all)", derived=True, methods=PROBED
    )
    probe_prompting: list[str] = setting(
        ["auto"],
        help="iterative: each probe task's prompting (its tasks.<task>.prompting), so it is generated as evaluated",
        derived=True,
        methods=PROBED,
    )
    probe_sampling: list[dict] = setting(
        [{}],
        help="iterative: each probe task's sampling (temperature, top_k, top_p, num_samples of tasks.<task>)",
        derived=True,
        methods=PROBED,
    )
    criterion: str = setting(
        "mean_ratio",
        help=(
            "iterative: a candidate's score; mean_ratio = mean over probe tasks of pruned / dense (the paper's), "
            "mean_score = the plain mean of the probe scores"
        ),
        choices=("mean_ratio", "mean_score"),
        config="scoring.iterative.criterion",
        methods=PROBED,
    )
    tie_break: str = setting(
        "later",
        help="iterative: which of the tied best candidates is removed (the paper: the later layer)",
        choices=("later", "earlier"),
        config="scoring.iterative.tie_break",
        methods=PROBED,
    )
    keep_first_layer: bool = setting(
        True,
        help="iterative: layer 0 is never a candidate (the paper's rule)",
        config="scoring.iterative.keep_first_layer",
        methods=PROBED,
    )

    def used_by(self, method: str) -> dict[str, Any]:
        return {k: v for k, v in self.to_dict().items() if _uses(type(self), k, method)}


def _uses(cls: type, name: str, method: str | None) -> bool:
    methods = {f.name: f for f in dataclasses.fields(cls)}[name].metadata["methods"]
    return methods is None or method in methods


@dataclasses.dataclass(frozen=True, kw_only=True)
class PruneSettings(OnModel):
    """prune: remove the scored layers at a ratio (the ratio is the job's wildcard)."""


# mixed precision of training (recovery.precision; layerprune.recovery.recover.resolve_precision)
PRECISIONS = ("auto", "bf16", "fp16", "fp32")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RecoverySettings(Seeded, OnModel):
    """recover: SFT of a pruned checkpoint with TRL, merged into a plain checkpoint."""

    SECTION: ClassVar[str] = "recovery"
    BUILT_BY: ClassVar[str] = "recover_checkpoint"
    trainer: str = setting(
        "lora",
        help=(
            "lora = PEFT LoRA on lora_target_modules; qlora = LoRA on a 4-bit NF4 (double-quantised, bitsandbytes) "
            "base; full = every parameter. All end in a plain merged checkpoint"
        ),
        choices=TRAINERS,
    )
    precision: str = setting(
        "auto",
        help="mixed precision of training; auto = bf16 on a GPU that supports it, fp32 on CPU",
        choices=PRECISIONS,
    )
    lora_r: int = setting(16, help="LoRA rank", schema={"minimum": 1})
    lora_alpha: int = setting(32, help="LoRA scaling numerator (scale = alpha / r)", schema={"minimum": 1})
    lora_dropout: float = setting(0.05, help="dropout on the LoRA input", schema={"minimum": 0, "maximum": 1})
    lora_target_modules: list[str] = setting(
        ["all-linear"],
        help=(
            "module names LoRA adapts (e.g. [q_proj, v_proj]); [all-linear] = every linear layer but the output "
            "head (PEFT's shorthand: on Llama-style models the 7 projections)"
        ),
        schema={"minItems": 1},
    )
    learning_rate: float = setting(2.0e-4, help="peak learning rate", schema={"exclusiveMinimum": 0})
    num_epochs: float = setting(1.0, help="passes over the data (max_steps overrides)", schema={"exclusiveMinimum": 0})
    batch_size: int = setting(8, help="examples per device and step", schema={"minimum": 1})
    grad_accum: int = setting(1, help="gradient accumulation steps", schema={"minimum": 1})
    max_length: int = setting(1024, help="tokens per example (longer ones are cut)", schema={"minimum": 8})
    warmup_steps: int = setting(10, help="linear warmup steps", schema={"minimum": 0})
    lr_scheduler: str = setting(
        "constant_with_warmup",
        help="learning-rate schedule",
        choices=("constant", "constant_with_warmup", "linear", "cosine"),
    )
    weight_decay: float = setting(1.0e-4, help="AdamW weight decay", schema={"minimum": 0})
    max_steps: int = setting(
        -1,
        help="-1 = train num_epochs; else this many optimizer steps (0 is refused: the Trainer would still take one)",
        schema={"minimum": -1},
    )
    eval_fraction: float = setting(
        0.0,
        help=(
            "share of the SFT data held out (seeded) as an eval split whose loss is logged after each epoch; "
            "the paper holds out 0.1"
        ),
        schema={"minimum": 0, "exclusiveMaximum": 1},
    )
    adam_beta1: float = setting(0.9, help="AdamW beta1", schema={"minimum": 0, "exclusiveMaximum": 1})
    adam_beta2: float = setting(0.99, help="AdamW beta2", schema={"minimum": 0, "exclusiveMaximum": 1})
    completion_only_loss: bool = setting(
        True, help="sgr/data train only on the answer tokens (heal always trains on every token)"
    )
    padding_free: bool = setting(
        False,
        help=(
            "flatten each batch into one row with per-sequence position ids instead of padding (same loss, fewer "
            "positions computed, but no faster on CPU with SDPA: see bench/sft_padding_free.py); still cut at "
            "max_length"
        ),
    )
    gradient_checkpointing: bool = setting(
        False, help="recompute activations in the backward pass (less memory, ~30% more compute)"
    )
    save_steps: int = setting(
        50,
        help="a training checkpoint every N optimizer steps in <output>.work, so a killed job resumes",
        schema={"minimum": 1},
    )
    save_total_limit: int = setting(2, help="training checkpoints kept", schema={"minimum": 1})
    report_to: str = setting(
        "none",
        help="passed to TRL's SFTConfig; tensorboard event files are kept in the checkpoint's runs/",
        choices=("none", "tensorboard", "wandb"),
    )

    def __post_init__(self) -> None:
        if self.max_steps == 0:
            raise ValueError("recovery.max_steps: 0 would still train one step; use -1 (num_epochs) or a count >= 1")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainingSeeds(StageSettings):
    """The study's training seeds: each trained recovery is replicated once per seed.

    Not a job's setting: a recover job receives one of these as its `seed` (RecoverySettings.seed),
    so the default (null: the study's `seed` alone) leaves every job's settings as they were.
    """

    SECTION: ClassVar[str] = "recovery"
    BUILT_BY: ClassVar[str] = "recover_checkpoint"
    seeds: list[int] | None = setting(
        None,
        help=(
            "training seeds: every trained recovery (not none) is trained and evaluated once per seed, and the "
            "report's point estimates are means over seeds with intervals that cover the seeds' spread and the "
            "items; the study's `seed` trains at the usual path, any other seed s at <recovery>-seed<s>; null = "
            "[seed], one seed, whose intervals cover item sampling only and decide no contrast of a trained recovery"
        ),
        schema={"minItems": 1, "uniqueItems": True, "items": {"minimum": 0, "maximum": 2**32 - 1}},
    )

    def resolve(self, seed: int) -> list[int]:
        """The seeds to train with: `seeds`, else the study's `seed` alone."""
        return list(self.seeds) if self.seeds is not None else [seed]


def replicate_suffix(training_seed: int, study_seed: int) -> str:
    """The suffix of a recovery's folder name: none for the study's own seed, `-seed<s>` for another."""
    return "" if training_seed == study_seed else f"-seed{training_seed}"


# the generalised JSD's beta of each divergence, in TRL's convention (GKDTrainer, DistillationTrainer)
DIVERGENCE_BETA = {"forward_kl": 0.0, "jsd": None, "reverse_kl": 1.0}


@dataclasses.dataclass(frozen=True, kw_only=True)
class DistillSettings(RecoverySettings):
    """recover_kd: the recovery settings, plus how the pruned student learns the dense teacher's distributions.

    The recovery keys (trainer, LoRA, learning rate, steps, ...) are `recovery`'s own, so `kd` and `sgr`
    train with the same budget; the keys below live in `recovery.kd`.
    """

    divergence: str = setting(
        "forward_kl",
        help=(
            "per-token divergence the student minimises: forward_kl = KL(teacher || student) (Minitron); jsd = the "
            "generalised Jensen-Shannon divergence with beta; reverse_kl = KL(student || teacher)"
        ),
        choices=tuple(DIVERGENCE_BETA),
        config="recovery.kd.divergence",
    )
    beta: float = setting(
        0.5,
        help="divergence jsd: the mixture weight of the teacher (TRL's beta; 0.5 = the symmetric JSD)",
        config="recovery.kd.beta",
        schema={"exclusiveMinimum": 0, "exclusiveMaximum": 1},
    )
    temperature: float = setting(
        1.0,
        help=(
            "softmax temperature of both distributions in the divergence, and the student's sampling temperature "
            "in kd_onpolicy (TRL DistillationTrainer's meaning)"
        ),
        config="recovery.kd.temperature",
        schema={"exclusiveMinimum": 0},
    )
    lmbda: float = setting(
        1.0,
        help=(
            "kd_onpolicy: share of batches whose completions the student generates (GKD's lambda; 1 = fully "
            "on-policy, below 1 the rest are the SGR completions). kd is off-policy (0) by definition"
        ),
        config="recovery.kd.lmbda",
        schema={"minimum": 0, "maximum": 1},
    )
    max_new_tokens: int = setting(
        128,
        help="kd_onpolicy: the longest completion the student generates per prompt",
        config="recovery.kd.max_new_tokens",
        schema={"minimum": 1},
    )

    def beta_for_trl(self) -> float:
        """TRL's beta: 0 = forward KL, 1 = reverse KL, else the generalised JSD's teacher weight."""
        fixed = DIVERGENCE_BETA[self.divergence]
        return self.beta if fixed is None else fixed

    @classmethod
    def own_fields(cls) -> list[str]:
        """The `recovery.kd` settings (the rest are RecoverySettings')."""
        return [f.name for f in dataclasses.fields(cls) if f.name not in RECOVERY_FIELDS]

    def distill_values(self, recovery: str) -> dict[str, Any]:
        """The `recovery.kd` settings a `recovery` job uses: an off-policy one never generates (no lmbda,
        max_new_tokens)."""
        unused = set() if RECOVERIES[recovery].on_policy else {"lmbda", "max_new_tokens"}
        if self.divergence != "jsd":
            unused.add("beta")
        return {name: getattr(self, name) for name in self.own_fields() if name not in unused}


RECOVERY_FIELDS = frozenset(f.name for f in dataclasses.fields(RecoverySettings))


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvaluationSettings(Seeded, OnModel):
    """evaluate_dense / evaluate_variant: one task on one checkpoint (per-task settings from tasks.<task>)."""

    SECTION: ClassVar[str] = "evaluation"
    BUILT_BY: ClassVar[str] = "evaluate_checkpoint"
    batch_size: int = setting(16, help="prompts per forward pass", schema={"minimum": 1})
    max_batch_tokens: int | None = setting(
        None,
        help=(
            "classification on the hf backend: at most this many tokens (rows x the batch's longest request) per "
            "lm-eval forward pass, which bounds the [rows, length, vocab] tensors lm-eval holds (bf16 logits, their "
            "fp32 log-softmax and the previous batch's: up to 14 x vocab bytes per token); batch_size stays the "
            "ceiling; null = batch_size alone"
        ),
        schema={"minimum": 1},
    )
    max_generate_tokens: int | None = setting(
        None,
        help=(
            "generative tasks: at most this many tokens per generation batch, rows x (its longest prompt + "
            "max_new_tokens): the KV cache a batch can fill (Llama-3.1-8B: 0.13 MB a token); batch_size stays the "
            "ceiling; null = batch_size alone"
        ),
        schema={"minimum": 1},
    )
    backend: str = setting(
        "hf",
        help=(
            "the model lm-eval tasks (classification) run on: hf = lm-eval's HFLM over the loaded checkpoint; "
            "vllm = lm-eval's vLLM model (the paper authors'; needs the `vllm` extra, an error without it)"
        ),
        choices=("hf", "vllm"),
    )
    max_new_tokens: int = setting(
        16, help="longest generated answer", config="tasks.*.max_new_tokens", schema={"minimum": 1}
    )
    prompting: str = setting(
        "auto",
        help="auto = the chat template when the tokenizer has one (instruct models), else plain few-shot",
        choices=("auto", "chat", "fewshot"),
        config="tasks.*.prompting",
    )
    temperature: float = setting(
        0.0, help="0 = greedy (deterministic); paper 0.9", config="tasks.*.temperature", schema={"minimum": 0}
    )
    top_k: int | None = setting(
        None, help="null = no top-k cut; paper 50", config="tasks.*.top_k", schema={"minimum": 1}
    )
    top_p: float | None = setting(
        None, help="null = no nucleus cut", config="tasks.*.top_p", schema={"exclusiveMinimum": 0, "maximum": 1}
    )
    num_samples: int = setting(
        1,
        help="generations per problem (needs temperature > 0 when above 1); seeded from `seed`",
        config="tasks.*.num_samples",
        schema={"minimum": 1, "maximum": 1000},  # pass@k papers draw at most a few hundred
    )
    pass_k: list[int] = setting(
        [1],
        help="code tasks report unbiased pass@k for each k up to num_samples",
        config="tasks.*.pass_k",
        schema={"minItems": 1, "items": {"type": "integer", "minimum": 1}},
    )
    chance: float | None = setting(
        None,
        help=(
            "the score a random guesser expects, for the report's chance-normalised retention; null = 1/choices for "
            "multiple choice, 0 for free generation (e.g. 0.1 for the arithmetic probe's first digit); stored in "
            "each result"
        ),
        config="tasks.*.chance",
        schema={"minimum": 0, "exclusiveMaximum": 1},
    )
    sandbox_timeout: float = setting(
        10.0,
        help="wall clock, kills the whole program",
        config="evaluation.sandbox.timeout_s",
        schema={"exclusiveMinimum": 0, "maximum": 86400},
    )
    sandbox_cpu: int = setting(
        10, help="RLIMIT_CPU (seconds)", config="evaluation.sandbox.cpu_s", schema={"minimum": 1, "maximum": 86400}
    )
    sandbox_memory_mb: int = setting(
        2048,
        help="RLIMIT_AS (address space)",
        config="evaluation.sandbox.memory_mb",
        schema={"minimum": 64, "maximum": 2**20},
    )
    sandbox_file_size_mb: int = setting(
        16, help="RLIMIT_FSIZE", config="evaluation.sandbox.file_size_mb", schema={"minimum": 1, "maximum": 2**20}
    )
    sandbox_nproc: int = setting(
        32,
        help="RLIMIT_NPROC (of the sandbox user nobody)",
        config="evaluation.sandbox.nproc",
        schema={"minimum": 1, "maximum": 2**16},
    )
    sandbox_isolation: str = setting(
        "strict",
        help="strict: refuse to grade (before the first sample) where a program cannot be kept from your files, "
        "the network and your processes (non-root without user namespaces); best_effort: grade with what the "
        "machine allows, recorded in each result and said in the report",
        config="evaluation.sandbox.isolation",
        choices=("strict", "best_effort"),
    )

    def __post_init__(self) -> None:
        too_large = [k for k in self.pass_k if k > self.num_samples]
        if too_large:
            raise ValueError(
                f"pass_k: {', '.join(map(str, too_large))} is more than num_samples ({self.num_samples}): pass@k "
                "needs at least k samples per problem; raise num_samples or drop the k"
            )

    def sampling_dict(self) -> dict[str, Any]:
        """The fields of generative.Sampling (`Sampling.from_settings`), as plain values: the workflow reads them
        without torch, and the settings import no evaluation code."""
        return {
            "temperature": self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "num_samples": self.num_samples,
        }


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReportSettings(Seeded):
    """aggregate: the summary table, the report and its plots."""

    SECTION: ClassVar[str] = "report"
    bootstrap_samples: int = setting(
        1000,
        help="paired-bootstrap resamples behind every retention interval (seeded from `seed`)",
        # resamples x items x variants indices are held at once: 1e15 asked numpy for 14 PiB
        schema={"minimum": 1, "maximum": 1_000_000},
    )
    confidence: float = setting(0.95, help="interval level", schema={"exclusiveMinimum": 0, "exclusiveMaximum": 1})
    headline_ratio: float | None = setting(
        None, help="the ratio of the report's first-screen table, one of pruning.ratios; null = the median ratio"
    )
    min_dense_margin: float = setting(
        0.05,
        help=(
            "a task counts towards its type's retention only if the dense model's lower confidence bound beats "
            "chance by this much (in score units, 0-1); the report lists the tasks left out and why"
        ),
        schema={"minimum": 0, "exclusiveMaximum": 1},
    )
    task_weighting: str = setting(
        "equal",
        help=(
            "how a type's retention weighs its tasks: equal (each task alike) or items (in proportion to its "
            "items, as if pooled); the report states the choice under its tables"
        ),
        choices=("equal", "items"),
    )
    task_chance: dict = setting(
        {},
        help="task -> its chance level, from tasks.<task>.chance (only the tasks that set one)",
        derived=True,
    )
    self_bleu_max_texts: int = setting(
        1000, help="outputs per result that self-BLEU compares (a seeded sample beyond that)", schema={"minimum": 2}
    )


# Every settings class, in the order their blocks appear in the schema.
STAGES: tuple[type[StageSettings], ...] = (
    Seeded,
    OnModel,
    BigbenchSourceSettings,
    CalibrationSettings,
    ScoreSettings,
    PromptSetSettings,
    PromptFilterSettings,
    MagpieSettings,
    SelfgenSettings,
    RecoverySettings,
    TrainingSeeds,
    DistillSettings,
    HealSettings,
    EvaluationSettings,
    ReportSettings,
)
