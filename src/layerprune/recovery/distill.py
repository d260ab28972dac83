"""Distillation recoveries: the pruned student learns the dense teacher's token distributions.

`kd` (off-policy) trains on the SGR prompt–response pairs, as `sgr` does, but its target at each
completion token is the teacher's whole next-token distribution instead of the one sampled token
(Minitron's recovery). `kd_onpolicy` lets the student write the completions and the teacher score
them (on-policy distillation, Agarwal et al. 2024), `recovery.kd.lmbda` of the batches.

Both run TRL's `GKDTrainer` (trl.experimental.gkd): its `lmbda` is exactly the off/on-policy mix
(0 for `kd`), its `beta` picks forward KL / generalised JSD / reverse KL, and, being an `SFTTrainer`,
it takes the same LoRA / QLoRA / full setup, checkpoints and resume as the other recoveries. The
teacher's logits for a batch come from one forward pass (no_grad) beside the student's.
`DistillationTrainer` (trl) is on-policy only (it always generates), so it cannot run `kd`; for one
code path both use GKD. Two small corrections to GKDTrainer 1.16, in `KDTrainer`:

* it applies `temperature` only to sampling, never to the divergence; here it softens both
  distributions in the loss too (DistillationTrainer's meaning), so `temperature` means one thing;
* on an on-policy batch the Trainer's token count (`num_items_in_batch`) is that of the dataset's
  completions it replaced, so the loss would be scaled by the wrong count; such a batch is
  normalised by its own generated tokens instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from layerprune.config.settings import DistillSettings
from layerprune.recovery.recover import Recipe, Run, training_device
from layerprune.registry import RECOVERIES

# the one teacher forward pass per batch: keep it out of autograd and in eval mode (GKDTrainer does both)


def conversation_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Prompt–completion records as GKD's chat records: the prompt turns followed by the answer turn."""
    return [{"messages": [*r["prompt"], *r["completion"]]} for r in records]


def load_teacher(teacher_dir: str | Path, dtype: str, device: str, student_config) -> Any:
    """The dense checkpoint as a frozen teacher; it must share the student's vocabulary (same tokenizer)."""
    from layerprune.models.checkpoints import load_checkpoint

    teacher, _ = load_checkpoint(teacher_dir, dtype=dtype, device=device)
    teacher_vocab = teacher.config.get_text_config().vocab_size
    student_vocab = student_config.get_text_config().vocab_size
    if teacher_vocab != student_vocab:
        raise ValueError(
            f"recover --teacher {teacher_dir}: vocabulary of {teacher_vocab} tokens, the student has {student_vocab}; "
            "distillation compares whole next-token distributions, so the teacher must be the student's dense model"
        )
    teacher.requires_grad_(False)
    return teacher.eval()


def gkd_arguments(options: DistillSettings, recovery: str) -> dict[str, Any]:
    """GKDConfig's own fields for `recovery` (the SFTConfig ones are the other recoveries')."""
    return {
        # an off-policy recovery (kd) trains on the dataset's completions only
        "lmbda": options.lmbda if RECOVERIES[recovery].on_policy else 0.0,
        "beta": options.beta_for_trl(),
        "temperature": options.temperature,
        "max_new_tokens": options.max_new_tokens,
        "seq_kd": False,
        # keep the LoRA dropout that sgr trains with (GKDConfig switches every dropout off by default)
        "disable_dropout": False,
    }


def kd_trainer_class():
    """GKDTrainer with the divergence at `temperature` and on-policy batches normalised by their own tokens."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # trl.experimental's import-time notice
        from trl.experimental.gkd import GKDTrainer

    class KDTrainer(GKDTrainer):
        _generated = False

        def generate_on_policy_outputs(self, model, inputs, generation_config):
            self._generated = True
            return GKDTrainer.generate_on_policy_outputs(model, inputs, generation_config)

        def training_step(self, model, inputs, num_items_in_batch=None):
            self._generated = False
            return super().training_step(model, inputs, num_items_in_batch)

        def generalized_jsd_loss(self, student_logits, teacher_logits, labels=None, beta=0.5, **kwargs):
            count = kwargs.pop("num_items_in_batch", None)
            if self._generated and count is not None and self.model.training:
                # The Trainer counted the replaced dataset completions and will not divide by the
                # accumulation steps (it thinks the loss is normalised): use this batch's own mean.
                count = None
                scale = 1.0 / self.current_gradient_accumulation_steps
            else:
                scale = 1.0
            loss = GKDTrainer.generalized_jsd_loss(
                student_logits,
                teacher_logits,
                labels=labels,
                beta=beta,
                temperature=self.temperature,
                num_items_in_batch=count,
                **kwargs,
            )
            return loss * scale

    return KDTrainer


def probe_token_ids(collator, rows: list[dict[str, Any]], count: int = 4, max_tokens: int = 64) -> list[list[int]]:
    """Token ids of the first `count` training conversations (cut to `max_tokens`), for the qlora merge check."""
    batch = collator(rows[:count])
    probes = []
    for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True):
        probes.append([int(t) for t, m in zip(ids, mask, strict=True) if m][:max_tokens])
    return probes


def gkd_config(options: DistillSettings, recovery: str) -> tuple[type, dict[str, Any]]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # trl.experimental's import-time notice
        from trl.experimental.gkd import GKDConfig
    return GKDConfig, gkd_arguments(options, recovery)


def kd_trainer(run: Run, model, tokenizer, args, peft_config):
    """KDTrainer with the dense checkpoint as teacher: one teacher forward pass per batch, beside the
    student's (GKDTrainer.compute_loss)."""
    from datasets import Dataset

    teacher = load_teacher(run.teacher_dir, run.options.dtype, training_device(), model.config)
    records, eval_records = conversation_records(run.records), conversation_records(run.eval_records)
    return kd_trainer_class()(
        model=model,
        teacher_model=teacher,
        args=args,
        train_dataset=Dataset.from_list(records),
        eval_dataset=Dataset.from_list(eval_records) if eval_records else None,
        processing_class=tokenizer,
        peft_config=peft_config,
    )


def recorded_settings(options: DistillSettings, recovery: str) -> dict[str, Any]:
    """What kd records beside the recovery settings: GKD's collator pads and trains on the completion
    tokens always, and the `recovery.kd` settings the recovery uses."""
    return {"completion_only_loss": True, "padding_free": False, **options.distill_values(recovery)}


# kd, kd_onpolicy: TRL's GKDTrainer (as KDTrainer) with the dense checkpoint as teacher
KD_RECIPE = Recipe(
    settings=DistillSettings,
    recorded=recorded_settings,
    config=gkd_config,
    trainer=kd_trainer,
    probes=lambda trainer, run: probe_token_ids(trainer.data_collator, conversation_records(run.records)),
)
