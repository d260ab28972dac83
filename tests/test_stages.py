"""Model stages on a tiny random Llama: selfgen, recover, evaluate, and the CLI.

The tests' tokenizer (helpers.models) is word-level and has no chat template; a minimal one is
added to the checkpoint, and every prompt is made of CORPUS words so that the
tokens are real ones rather than <unk>.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.models import CHAT_TEMPLATE, UNK_ID, make_tiny_checkpoint
from helpers.records import generative_task, sourced_prompt_records
from helpers.training import RECOVER_SETTINGS, VENV_BIN
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from layerprune.config.settings import EvaluationSettings
from layerprune.data.selfgen import self_generate
from layerprune.evaluation.evaluate import evaluate_checkpoint, fewshot_prompt, normalise_answer
from layerprune.io import read_json, read_jsonl, write_json, write_jsonl
from layerprune.pruning.prune import prune_checkpoint
from layerprune.recovery.recover import recover_checkpoint
from layerprune.scoring.score import score_layers

NUM_LAYERS = 4
SYSTEM_PROMPT = "hello world"


def safetensors_of(directory: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(path))
    assert tensors, f"no safetensors in {directory}"
    return tensors


@pytest.fixture(scope="module", autouse=True)
def single_torch_thread():
    """Tiny models run far faster on one thread, above all on a busy machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    dense = tmp_path_factory.mktemp("dense") / "m"
    return make_tiny_checkpoint(dense, family="llama", num_layers=NUM_LAYERS, chat_template=CHAT_TEMPLATE)


@pytest.fixture(scope="module")
def tokenizer(checkpoint):
    return AutoTokenizer.from_pretrained(checkpoint)


@pytest.fixture(scope="module")
def model(checkpoint):
    return AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()


def test_chat_template_renders_real_tokens(tokenizer):
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "the quick brown fox"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<bos> hello world <eos> <bos> the quick brown fox <eos> <bos>"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.bos_token_id
    assert UNK_ID not in ids


# --------------------------------------------------------------------------- selfgen


@pytest.fixture(scope="module")
def sampled(checkpoint, tmp_path_factory):
    """Three sampled self-generation runs: seed 0 twice and seed 1."""
    root = tmp_path_factory.mktemp("selfgen")
    records = sourced_prompt_records(8)
    for record in records:  # prepare_prompt_set puts the system prompt into the prompt set
        record["prompt"].insert(0, {"role": "system", "content": SYSTEM_PROMPT})
    write_jsonl(root / "prompts.jsonl", records)
    settings = dict(max_new_tokens=6, temperature=1.0, top_p=1.0, batch_size=3)
    counts = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        counts[name] = self_generate(
            checkpoint, root / "prompts.jsonl", root / f"{name}.jsonl", seed=seed, dtype="float32", **settings
        )
    return root, records, counts


def test_selfgen_writes_prompt_completion_records(sampled):
    root, records, counts = sampled
    out = read_jsonl(root / "a.jsonl")
    assert counts["a"] == len(out) == len(records)
    for record, generated in zip(records, out, strict=True):
        assert set(generated) == {"prompt", "completion", "source"}
        assert generated["source"] == record["source"], "order must follow the prompts file"
        assert generated["prompt"] == record["prompt"], "the prompt set's conversation, system message included"
        assert len(generated["completion"]) == 1
        assert generated["completion"][0]["role"] == "assistant"
        content = generated["completion"][0]["content"]
        assert isinstance(content, str) and content == content.strip()
        assert "<eos>" not in content and "<pad>" not in content
    assert any(g["completion"][0]["content"] for g in out), "every response is empty"


def test_selfgen_same_seed_same_file(sampled):
    root, _, _ = sampled
    assert (root / "a.jsonl").read_bytes() == (root / "b.jsonl").read_bytes()


def test_selfgen_sampling_depends_on_seed(sampled):
    root, _, _ = sampled
    a, c = read_jsonl(root / "a.jsonl"), read_jsonl(root / "c.jsonl")
    assert [r["prompt"] for r in a] == [r["prompt"] for r in c]
    assert [r["completion"] for r in a] != [r["completion"] for r in c]


def test_selfgen_temperature_zero_is_greedy(checkpoint, tokenizer, model, tmp_path):
    records = sourced_prompt_records(5, offset=2)
    write_jsonl(tmp_path / "prompts.jsonl", records)
    kwargs = dict(max_new_tokens=5, temperature=0.0, top_p=0.9, batch_size=4, dtype="float32")
    self_generate(checkpoint, tmp_path / "prompts.jsonl", tmp_path / "g0.jsonl", seed=0, **kwargs)
    self_generate(checkpoint, tmp_path / "prompts.jsonl", tmp_path / "g1.jsonl", seed=1, **kwargs)
    assert (tmp_path / "g0.jsonl").read_bytes() == (tmp_path / "g1.jsonl").read_bytes(), "greedy ignores the seed"
    generated = read_jsonl(tmp_path / "g0.jsonl")
    for record, out in zip(records, generated, strict=True):
        assert out["prompt"] == record["prompt"]
        # One prompt on its own: no batch, no padding.
        text = tokenizer.apply_chat_template(record["prompt"], tokenize=False, add_generation_prompt=True)
        inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            ids = model.generate(**inputs, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        expected = tokenizer.decode(ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()
        assert out["completion"] == [{"role": "assistant", "content": expected}]


# --------------------------------------------------------------------------- recover


@pytest.fixture(scope="module")
def recovery_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("recovery_data")
    records = sourced_prompt_records(6)
    # An empty completion is dropped before training.
    records.insert(3, {**sourced_prompt_records(1, offset=9)[0], "completion": [{"role": "assistant", "content": " "}]})
    write_jsonl(root / "train.jsonl", records)
    return root / "train.jsonl"


@pytest.fixture(scope="module")
def pruned(checkpoint, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pruned")
    write_json(root / "scores.json", score_layers("reverse", num_layers=NUM_LAYERS))
    prune_checkpoint(checkpoint, root / "scores.json", 0.25, root / "pruned", dtype="float32")
    return root / "pruned"


@pytest.fixture(scope="module")
def recovered(pruned, recovery_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("recovered")
    first = recover_checkpoint(pruned, recovery_data, root / "a", "sgr", **RECOVER_SETTINGS)
    second = recover_checkpoint(pruned, recovery_data, root / "b", "sgr", **RECOVER_SETTINGS)
    return root, first, second


def test_recover_writes_a_plain_merged_checkpoint(pruned, recovered):
    root, record, _ = recovered
    out = root / "a"
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "recovery.json", "training_args.json", "pruning.json"} <= names
    assert not [n for n in names if "adapter" in n], "the LoRA adapter must be merged, not saved"
    assert not [n for n in root.iterdir() if n.name.endswith(".tmp")]
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert merged.config.num_hidden_layers == NUM_LAYERS - 1
    assert len(merged.model.layers) == NUM_LAYERS - 1
    assert type(merged).__name__ == "LlamaForCausalLM"
    assert AutoTokenizer.from_pretrained(out).chat_template == CHAT_TEMPLATE

    before, after = safetensors_of(pruned), safetensors_of(out)
    assert set(after) == set(before)
    assert not [k for k in after if "lora" in k or "base_model" in k or "modules_to_save" in k]
    changed = sorted(k for k in after if not torch.equal(after[k], before[k]))
    linear = [k for k in after if k.endswith("_proj.weight")]
    assert linear and set(changed) == set(linear), "LoRA on all linear layers changes those and nothing else"
    for key in changed:
        assert after[key].shape == before[key].shape
        assert torch.isfinite(after[key]).all()


def test_recover_record(pruned, recovery_data, recovered):
    root, record, _ = recovered
    assert read_json(root / "a" / "recovery.json") == record
    assert record["recovery"] == "sgr"
    assert record["dataset"] == str(recovery_data)
    assert record["num_examples"] == 6  # the record with an empty completion is dropped
    assert record["global_steps"] == 3
    assert [e["step"] for e in record["loss_curve"]] == [1, 2, 3]
    assert all(math.isfinite(e["loss"]) and e["loss"] > 0 for e in record["loss_curve"])
    assert math.isfinite(record["train_loss"])
    settings = {k: v for k, v in RECOVER_SETTINGS.items() if k != "dtype"}
    assert {k: record["settings"][k] for k in settings} == settings
    assert record["settings"]["trainer"] == "lora" and record["settings"]["completion_only_loss"] is True
    args = json.loads((root / "a" / "training_args.json").read_text())
    assert args["learning_rate"] == 1e-2
    assert args["max_steps"] == 3 and args["seed"] == 0
    assert args["completion_only_loss"] is True
    assert read_json(root / "a" / "pruning.json") == read_json(pruned / "pruning.json")


def test_recover_is_reproducible(recovered):
    root, first, second = recovered
    assert first["loss_curve"] == second["loss_curve"]
    a, b = safetensors_of(root / "a"), safetensors_of(root / "b")
    assert set(a) == set(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


@pytest.mark.parametrize("padding_free", [False, True])
def test_recover_completion_only_loss(checkpoint, tokenizer, tmp_path, monkeypatch, padding_free):
    """The batches the trainer computes its loss on mask every prompt token (and padding).

    Padding-free batches are one row; position ids restart at 0 at each sequence.
    """
    import trl

    captured = []

    class RecordingSFTTrainer(trl.SFTTrainer):
        def compute_loss(self, model, inputs, *args, **kwargs):
            captured.append({k: v.detach().clone() for k, v in inputs.items() if torch.is_tensor(v)})
            return super().compute_loss(model, inputs, *args, **kwargs)

    monkeypatch.setattr(trl, "SFTTrainer", RecordingSFTTrainer)
    records = sourced_prompt_records(6, offset=4)
    write_jsonl(tmp_path / "train.jsonl", records)
    record = recover_checkpoint(
        checkpoint, tmp_path / "train.jsonl", tmp_path / "out", "data", padding_free=padding_free, **RECOVER_SETTINGS
    )
    assert record["recovery"] == "data"
    assert not (tmp_path / "out" / "pruning.json").exists(), "no pruning.json in the input, none in the output"

    def encode(messages, add_generation_prompt=False):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        return tokenizer(text, add_special_tokens=False).input_ids

    prompt_length = {}
    for r in records:
        full = encode(r["prompt"] + r["completion"])
        prompt = encode(r["prompt"], add_generation_prompt=True)
        assert full[: len(prompt)] == prompt
        prompt_length[tuple(full)] = len(prompt)

    assert len(captured) == 3
    seen = []
    for batch in captured:
        if padding_free:
            assert batch["input_ids"].shape[0] == 1 and "attention_mask" not in batch
            starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist()
            bounds = list(zip(starts, [*starts[1:], batch["input_ids"].shape[1]], strict=True))
            rows = [(batch["input_ids"][0, a:b], batch["labels"][0, a:b], torch.ones(b - a)) for a, b in bounds]
            assert len(rows) == 2
        else:
            rows = zip(batch["input_ids"], batch["labels"], batch["attention_mask"], strict=True)
        for ids, labels, mask in rows:
            length = int(mask.sum())
            assert mask[:length].all(), "right padding expected"
            tokens = tuple(ids[:length].tolist())
            assert tokens in prompt_length, "the trainer saw a sequence that is not a rendered record"
            start = prompt_length[tokens]
            assert (labels[:start] == -100).all(), "prompt tokens must not be trained on"
            assert torch.equal(labels[start:length], ids[start:length]), "completion tokens are the targets"
            assert (labels[length:] == -100).all(), "padding must not be trained on"
            seen.append(tokens)
    assert sorted(seen) == sorted(prompt_length), "one epoch sees every record once"


def test_recover_rejects_empty_completions(checkpoint, tmp_path):
    records = sourced_prompt_records(3)
    for r in records:
        r["completion"] = [{"role": "assistant", "content": "  \n"}]
    write_jsonl(tmp_path / "empty.jsonl", records)
    with pytest.raises(ValueError, match="non-empty completions"):
        recover_checkpoint(checkpoint, tmp_path / "empty.jsonl", tmp_path / "out", "sgr", **RECOVER_SETTINGS)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- evaluate

VARIANT = {"model": "tiny", "method": "bi", "ratio": 0.25, "recovery": "sgr"}


def test_evaluate_generative_exact_match(checkpoint, tokenizer, model, tmp_path):
    task = generative_task()
    write_json(tmp_path / "task.json", task)
    kwargs = dict(batch_size=4, max_new_tokens=4, seed=0, dtype="float32", variant=VARIANT, prompting="fewshot")
    first = evaluate_checkpoint(checkpoint, tmp_path / "task.json", "gen", tmp_path / "first.json", **kwargs)
    outputs = [s["output"] for s in first["samples"]]
    answerable = [i for i, output in enumerate(outputs) if normalise_answer(output)]
    half = len(outputs) // 2
    assert len(answerable) >= half, f"too few non-empty outputs to test with: {outputs}"
    hits = set(answerable[:half])
    # Reuse the model's own answers as targets for half of the samples (upper case
    # and a trailing period: the comparison normalises both).
    targets = [
        [normalise_answer(outputs[i]).upper() + "."] if i in hits else ["no such answer"] for i in range(len(outputs))
    ]
    write_json(tmp_path / "task.json", generative_task(targets))
    result = evaluate_checkpoint(checkpoint, tmp_path / "task.json", "gen", tmp_path / "second.json", **kwargs)

    assert read_json(tmp_path / "second.json") == result
    assert {k: result[k] for k in VARIANT} == VARIANT
    # self-describing: the report needs neither the config nor the checkpoint to read it
    assert (result["chance"], result["chance_source"]) == (0.0, "free generation")
    # every setting it ran with: the defaults with the given ones applied
    assert (result["dtype"], result["prompting"]) == ("float32", "fewshot")
    assert result["settings"] == {
        **EvaluationSettings().to_dict(),
        **{k: v for k, v in kwargs.items() if k != "variant"},
    }
    told = evaluate_checkpoint(
        checkpoint, tmp_path / "task.json", "gen", tmp_path / "third.json", EvaluationSettings(chance=0.1), **kwargs
    )  # fmt: skip
    assert (told["chance"], told["chance_source"]) == (0.1, "given by the task")
    assert told["settings"]["chance"] == 0.1 and told["settings"]["max_new_tokens"] == 4
    assert (result["task"], result["type"], result["metric"]) == ("gen", "generative", "exact_match")
    assert result["source"] == "bigbench:test/gen" and result["num_fewshot"] == 1
    assert result["checkpoint"] == str(checkpoint)
    assert result["n"] == len(result["samples"]) == 8
    assert result["value"] == len(hits) / 8 == 0.5
    flags = [float(s["correct"]) for s in result["samples"]]
    assert math.isclose(result["stderr"], statistics.stdev(flags) / math.sqrt(len(flags)), rel_tol=1e-12)
    for i, (sample, logged) in enumerate(zip(generative_task(targets)["samples"], result["samples"], strict=True)):
        assert logged["id"] == sample["id"]
        assert logged["correct"] is (i in hits)
        assert logged["output"] == outputs[i], "greedy decoding is deterministic"
        assert logged["target"] == targets[i]
        assert logged["prompt"] == f"Q: the quick brown\nA: fox\n\nQ: {sample['input']}\nA:"
        assert logged["prompt"] == fewshot_prompt(task["fewshot"], sample["input"])

    # The batched, left-padded decoding equals decoding one prompt alone.
    for i in (0, 5):
        inputs = tokenizer(result["samples"][i]["prompt"], return_tensors="pt")
        with torch.no_grad():
            ids = model.generate(**inputs, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        alone = tokenizer.decode(ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        assert normalise_answer(alone) == normalise_answer(outputs[i])


CLASSIFICATION_SAMPLES = [
    {"id": 0, "input": "the quick brown", "choices": ["fox", "dog", "lazy dog"], "label": 0},
    {"id": 1, "input": "jumps over the lazy", "choices": ["fox", "dog", "lazy dog"], "label": 1},
    {"id": 2, "input": "a tiny random", "choices": ["model", "network", "layer pruning"], "label": 0},
    {"id": 3, "input": "hello", "choices": ["world", "fox"], "label": 0},
    {"id": 4, "input": "pruning removes decoder", "choices": ["layers", "weights", "cache slot"], "label": 0},
    {"id": 5, "input": "every kept layer keeps its", "choices": ["weights", "rest", "network"], "label": 2},
]
CLASSIFICATION_FEWSHOT = [{"id": 50, "input": "the lazy", "choices": ["dog", "fox"], "label": 0}]


def continuation_loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    """Sum of log-probs of the continuation tokens, split the way lm-eval does for causal LMs."""
    context_ids = tokenizer(context, add_special_tokens=False).input_ids
    whole_ids = tokenizer(context + continuation, add_special_tokens=False).input_ids
    continuation_ids = whole_ids[len(context_ids) :]
    assert whole_ids[: len(context_ids)] == context_ids and continuation_ids
    ids = torch.tensor([context_ids + continuation_ids])
    with torch.no_grad():
        logprobs = model(ids).logits[0, :-1].double().log_softmax(-1)
    targets = ids[0, len(context_ids) :]
    return float(logprobs[len(context_ids) - 1 :].gather(-1, targets[:, None]).sum())


@pytest.mark.parametrize("num_fewshot", [0, 1])
def test_evaluate_classification_with_lm_eval(checkpoint, tokenizer, model, tmp_path, num_fewshot):
    task = {
        "source": "bigbench:test/mc",
        "type": "classification",
        "num_fewshot": num_fewshot,
        "seed": 0,
        "fewshot": CLASSIFICATION_FEWSHOT if num_fewshot else [],
        "samples": CLASSIFICATION_SAMPLES,
    }
    write_json(tmp_path / "task.json", task)
    result = evaluate_checkpoint(
        checkpoint, tmp_path / "task.json", "mc", tmp_path / "result.json",
        batch_size=4, max_new_tokens=4, seed=0, dtype="float32", variant=VARIANT,
    )  # fmt: skip
    assert read_json(tmp_path / "result.json") == result
    assert {k: result[k] for k in VARIANT} == VARIANT
    assert (result["type"], result["metric"], result["num_fewshot"]) == ("classification", "accuracy", num_fewshot)
    assert result["n"] == len(result["samples"]) == len(CLASSIFICATION_SAMPLES)
    counts = [len(sample["choices"]) for sample in CLASSIFICATION_SAMPLES]
    assert result["chance"] == pytest.approx(sum(1 / c for c in counts) / len(counts))
    assert result["chance_source"].startswith("1/choices") and result["prompting"] == "fewshot"
    assert 0.0 <= result["value"] <= 1.0
    assert math.isfinite(result["stderr"])
    correct = []
    for sample, logged in zip(CLASSIFICATION_SAMPLES, result["samples"], strict=True):
        assert logged["id"] == sample["id"]
        lls = logged["loglikelihoods"]
        assert len(lls) == len(sample["choices"])
        best = max(range(len(lls)), key=lls.__getitem__)
        assert logged["correct"] is (best == sample["label"])
        assert logged["output"] == sample["choices"][best]
        assert logged["target"] == sample["choices"][sample["label"]]
        correct.append(logged["correct"])

        question = f"Q: {sample['input']}\nA:"
        if num_fewshot:
            shot = CLASSIFICATION_FEWSHOT[0]
            question = f"Q: {shot['input']}\nA: {shot['choices'][shot['label']]}\n\n{question}"
        assert logged["prompt"] == question
        expected = [continuation_loglikelihood(model, tokenizer, question, " " + c) for c in sample["choices"]]
        assert lls == pytest.approx(expected, abs=1e-4)
    assert result["value"] == pytest.approx(sum(correct) / len(correct))
    # Few-shot examples are only prompt material: lm-eval never scores them.
    assert 50 not in [s["id"] for s in result["samples"]]


# --------------------------------------------------------------------------- CLI


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=300)


def test_cli_help():
    console = shutil.which("layerprune", path=str(VENV_BIN))
    assert console, f"no layerprune console script in {VENV_BIN}"
    done = run_cli(console, "--help")
    assert done.returncode == 0, done.stderr
    for stage in ("materialize", "fetch-bigbench", "prune", "selfgen", "recover", "evaluate", "aggregate"):
        assert stage in done.stdout
    done = run_cli(sys.executable, "-m", "layerprune", "evaluate", "--help")
    assert done.returncode == 0, done.stderr
    assert "--task-file" in done.stdout and "--model-name" in done.stdout


def test_cli_prune_rejects_bad_ratio(checkpoint, tmp_path):
    write_json(tmp_path / "scores.json", score_layers("reverse", num_layers=NUM_LAYERS))
    out = tmp_path / "pruned"
    done = run_cli(
        sys.executable, "-m", "layerprune", "prune", "--model", str(checkpoint),
        "--scores", str(tmp_path / "scores.json"), "--ratio", "1.5", "--out", str(out), "--dtype", "float32",
    )  # fmt: skip
    assert done.returncode != 0
    assert "ratio" in done.stderr
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.json"]
