"""Self-generated responses: prompt sources, token filter, backends, resumption, counts, Magpie.

Everything runs a real tiny random Llama (helpers.models) through the real generation
code; the only special model is one whose EOS row is raised so that a random
network ends some answers early and leaves others unfinished.
"""

from __future__ import annotations

import importlib.machinery
import json
import os
import signal
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import datasets
import pytest
import torch
from helpers.models import CHAT_TEMPLATE, EOS_ID, FAMILIES, make_tiny_checkpoint
from helpers.records import phrase
from transformers import AutoModelForCausalLM, AutoTokenizer

from layerprune.data.magpie import NearDuplicateFilter, magpie_prompts, magpie_user_prefix, shingles
from layerprune.data.selfgen import batch_seed, partial_path, resolve_backend, self_generate
from layerprune.data.sources import filter_prompt_set, prepare_prompt_set, prompt_token_ids
from layerprune.io import read_json, read_jsonl, write_jsonl

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SRC = Path(__file__).resolve().parents[1] / "src"


def prompt_records(count: int) -> list[dict]:
    return [
        {
            "prompt": [{"role": "user", "content": phrase(3 * i, 2 + (5 * i) % 9)}],
            "completion": [{"role": "assistant", "content": phrase(i, 2)}],
            "source": f"test#{i}",
        }
        for i in range(count)
    ]


@pytest.fixture(scope="module", autouse=True)
def single_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("dense") / "m", num_layers=2, chat_template=CHAT_TEMPLATE)


def boost_eos(path: Path, fraction: float = 0.3) -> Path:
    """Make EOS the top logit at about `fraction` of positions of the tiny random model at `path`.

    The EOS row of the LM head is set along the mean final hidden state, scaled so that
    it beats every other logit at that share of random contexts: answers then end at
    varied lengths, and some not at all.
    """
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = torch.randint(4, 20, (16, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hidden = model.model(input_ids=ids).last_hidden_state.reshape(-1, model.config.hidden_size)
        direction = hidden.mean(0)
        logits = hidden @ model.get_output_embeddings().weight.T
        logits[:, EOS_ID] = -float("inf")
        projection = hidden @ direction
        ratio = logits.max(1).values / projection
        model.get_output_embeddings().weight[EOS_ID] = direction * torch.quantile(ratio[projection > 0], 1 - fraction)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def eos_checkpoint(tmp_path_factory) -> Path:
    """A tiny Llama whose answers end early about a third of the time (greedy)."""
    path = make_tiny_checkpoint(tmp_path_factory.mktemp("eos") / "m", num_layers=2, seed=3, chat_template=CHAT_TEMPLATE)
    return boost_eos(path)


# --------------------------------------------------------------------------- prompt sources

ALPACA_ROWS = {
    "instruction": ["Give three tips.", "Translate the sentence.", "  ", "Name a colour."],
    "input": ["", "the quick brown fox", "ignored: no instruction", None],
    "output": ["Eat, sleep, move.", "le renard", "x", "Blue."],
}
ALPACA_PROMPTS = {
    "Give three tips.": "Eat, sleep, move.",
    "Translate the sentence.\n\nthe quick brown fox": "le renard",
    "ignored: no instruction": "x",
    "Name a colour.": "Blue.",
}


@pytest.mark.parametrize("layout", ["dataset", "dataset_dict", "jsonl_file"])
def test_hub_source_reads_local_datasets_with_alpaca_field_mapping(tmp_path, layout):
    """instruction + "\\n\\n" + input when input is non-empty; the response is `output`."""
    dataset = datasets.Dataset.from_dict(ALPACA_ROWS)
    if layout == "dataset":
        dataset.save_to_disk(tmp_path / "alpaca")
        path = tmp_path / "alpaca"
    elif layout == "dataset_dict":
        datasets.DatasetDict({"train": dataset}).save_to_disk(tmp_path / "alpaca")
        path = tmp_path / "alpaca"
    else:
        path = tmp_path / "alpaca.jsonl"
        dataset.to_json(path)
    out = tmp_path / "prompts.jsonl"
    count = prepare_prompt_set(
        None,
        None,
        4,
        0,
        out,
        system_prompt="You are a helpful assistant.",
        source="hub",
        path=str(path),
        prompt_fields=["instruction", "input"],
        response_field="output",
    )
    records = read_jsonl(out)
    assert count == len(records) == 4
    found = {}
    for record in records:
        system, user = record["prompt"]
        assert system == {"role": "system", "content": "You are a helpful assistant."}
        assert record["source"].startswith(f"hub:{path}#")
        found[user["content"]] = record["completion"][0]["content"]
    assert found == ALPACA_PROMPTS


def test_hub_source_missing_split_and_field_are_named(tmp_path):
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(ALPACA_ROWS)}).save_to_disk(tmp_path / "d")
    common = dict(source="hub", path=str(tmp_path / "d"), response_field="output")
    with pytest.raises(KeyError, match="prompts.split='test'"):
        prepare_prompt_set(
            None, None, 2, 0, tmp_path / "o.jsonl", split="test", prompt_fields=["instruction"], **common
        )
    with pytest.raises(KeyError, match="prompts.prompt_fields"):
        prepare_prompt_set(None, None, 2, 0, tmp_path / "o.jsonl", prompt_fields=["question"], **common)
    assert not (tmp_path / "o.jsonl").exists()


def test_jsonl_source_with_own_field_names_and_no_answers(tmp_path):
    rows = [{"q": f"question {i}", "ctx": "" if i % 2 else f"context {i}", "a": f"answer {i}"} for i in range(10)]
    write_jsonl(tmp_path / "mine.jsonl", rows)
    settings = dict(source="jsonl", path=str(tmp_path / "mine.jsonl"), prompt_fields=["q", "ctx"], separator=" | ")
    prepare_prompt_set(None, None, 10, 1, tmp_path / "with.jsonl", response_field="a", **settings)
    prepare_prompt_set(None, None, 10, 1, tmp_path / "without.jsonl", response_field=None, **settings)
    with_answers, without = read_jsonl(tmp_path / "with.jsonl"), read_jsonl(tmp_path / "without.jsonl")
    assert [r["prompt"] for r in with_answers] == [r["prompt"] for r in without], "same seed, same prompts"
    for record in with_answers:
        user = record["prompt"][-1]["content"]
        i = int(user.split()[1])
        assert user == (f"question {i}" if i % 2 else f"question {i} | context {i}")
        assert record["completion"] == [{"role": "assistant", "content": f"answer {i}"}]
    assert all(set(r) == {"prompt", "source"} for r in without), "no answers -> no completion"
    with pytest.raises(ValueError, match="num_prompts=11"):
        prepare_prompt_set(None, None, 11, 1, tmp_path / "x.jsonl", response_field="a", **settings)


def test_filter_prompt_set_drops_long_prompts_and_reports(checkpoint, tmp_path):
    records = prompt_records(12)
    write_jsonl(tmp_path / "prompts.jsonl", records)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    lengths = [len(prompt_token_ids(tokenizer, r["prompt"])) for r in records]
    limit = sorted(lengths)[6]
    expected = [r for r, n in zip(records, lengths, strict=True) if n <= limit]
    assert 0 < len(expected) < len(records)
    stats = filter_prompt_set(
        tmp_path / "prompts.jsonl", checkpoint, limit, tmp_path / "kept.jsonl", tmp_path / "s.json"
    )
    assert read_jsonl(tmp_path / "kept.jsonl") == expected, "file order kept, long prompts gone"
    assert read_json(tmp_path / "s.json") == stats
    assert stats["kept"] == len(expected) and stats["dropped_too_long"] == len(records) - len(expected)
    # no limit: all kept
    stats = filter_prompt_set(tmp_path / "prompts.jsonl", checkpoint, None, tmp_path / "all.jsonl", tmp_path / "a.json")
    assert stats["dropped_too_long"] == 0 and read_jsonl(tmp_path / "all.jsonl") == records
    with pytest.raises(ValueError, match="max_prompt_tokens=1 drops every one"):
        filter_prompt_set(tmp_path / "prompts.jsonl", checkpoint, 1, tmp_path / "none.jsonl", tmp_path / "n.json")


# --------------------------------------------------------------------------- backend selection


@pytest.mark.parametrize(
    ("has_vllm", "has_cuda", "expected"),
    [
        (True, True, "vllm"),
        (True, False, "transformers"),
        (False, True, "transformers"),
        (False, False, "transformers"),
    ],
)
def test_auto_backend_needs_vllm_and_a_gpu(has_vllm, has_cuda, expected):
    assert resolve_backend("auto", has_vllm=has_vllm, has_cuda=has_cuda) == expected
    assert resolve_backend("transformers", has_vllm=has_vllm, has_cuda=has_cuda) == "transformers"


def test_vllm_backend_without_vllm_or_gpu_is_a_clear_error(checkpoint, tmp_path):
    with pytest.raises(RuntimeError, match="selfgen.backend=vllm, but vLLM is not installed"):
        resolve_backend("vllm", has_vllm=False, has_cuda=True)
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        resolve_backend("vllm", has_vllm=True, has_cuda=False)
    with pytest.raises(ValueError, match="selfgen.backend='tgi'"):
        resolve_backend("tgi")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    # This CPU machine, for real: auto picks transformers, vllm is refused before any work.
    assert resolve_backend("auto") == "transformers"
    write_jsonl(tmp_path / "p.jsonl", prompt_records(2))
    with pytest.raises(RuntimeError, match="selfgen.backend=vllm"):
        self_generate(checkpoint, tmp_path / "p.jsonl", tmp_path / "o.jsonl", 4, 0.0, 1.0, 2, 0, backend="vllm")
    assert not (tmp_path / "o.jsonl").exists()


class FakeVLLM:
    """A stand-in `vllm` module (the real one needs a CUDA GPU): records what the engine is built with."""

    def __init__(self) -> None:
        self.engines: list[dict] = []
        self.environ_at_start: list[str | None] = []
        self.requests: list[tuple[list[int], dict]] = []
        fake = self

        class LLM:
            def __init__(self, **kwargs):
                fake.engines.append(kwargs)
                fake.environ_at_start.append(os.environ.get("VLLM_BATCH_INVARIANT"))

            def generate(self, prompts, params, use_tqdm=False):
                outputs = []
                for prompt, param in zip(prompts, params, strict=True):
                    fake.requests.append((prompt["prompt_token_ids"], param.kwargs))
                    answer = types.SimpleNamespace(text=f" answer {param.kwargs['seed']} ", finish_reason="stop")
                    outputs.append(types.SimpleNamespace(outputs=[answer]))
                return outputs

        class SamplingParams:
            def __init__(self, **kwargs):
                self.kwargs = kwargs

        self.module = types.ModuleType("vllm")
        self.module.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
        self.module.LLM, self.module.SamplingParams = LLM, SamplingParams


@pytest.fixture
def fake_vllm(monkeypatch):
    """vLLM 'installed' on a 'GPU' of compute capability 9.0, for the code path that builds the engine."""
    fake = FakeVLLM()
    monkeypatch.setitem(sys.modules, "vllm", fake.module)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setenv("VLLM_BATCH_INVARIANT", "")  # restored (removed) after the test: the code sets it
    monkeypatch.delenv("VLLM_BATCH_INVARIANT")
    return fake


def test_vllm_engine_gets_the_selfgen_settings(fake_vllm, checkpoint, tmp_path):
    """max_model_len, gpu_memory_utilization, tensor_parallel_size and batch invariance reach LLM(...),
    from the settings JSON the rule passes, through the CLI."""
    from layerprune.cli import main

    write_jsonl(tmp_path / "p.jsonl", prompt_records(3))
    settings = {
        "max_new_tokens": 8, "temperature": 0.9, "top_p": 0.95, "batch_size": 2, "seed": 5, "dtype": "bfloat16",
        "backend": "vllm", "max_model_len": 4096, "gpu_memory_utilization": 0.75, "tensor_parallel_size": 2,
    }  # fmt: skip
    main(["selfgen", "--model", str(checkpoint), "--prompts", str(tmp_path / "p.jsonl"),
          "--settings", json.dumps(settings), "--out", str(tmp_path / "o.jsonl")])  # fmt: skip
    (engine,) = fake_vllm.engines
    assert engine == {
        "model": str(checkpoint), "dtype": "bfloat16", "seed": 5, "max_model_len": 4096,
        "gpu_memory_utilization": 0.75, "tensor_parallel_size": 2, "enable_prefix_caching": False,
    }  # fmt: skip
    assert fake_vllm.environ_at_start == ["1"]  # batch-invariant mode (the default) set before the engine starts
    assert len(fake_vllm.requests) == 3 and {r[1]["max_tokens"] for r in fake_vllm.requests} == {8}
    assert read_json(tmp_path / "o.stats.json")["backend"] == "vllm"

    # off: vLLM's defaults (prefix caching on, no invariance); no max_model_len: the model config's
    del settings["max_model_len"]
    settings["batch_invariant"] = False
    main(["selfgen", "--model", str(checkpoint), "--prompts", str(tmp_path / "p.jsonl"),
          "--settings", json.dumps(settings), "--out", str(tmp_path / "o2.jsonl")])  # fmt: skip
    assert fake_vllm.engines[1] == {
        "model": str(checkpoint), "dtype": "bfloat16", "seed": 5, "gpu_memory_utilization": 0.75,
        "tensor_parallel_size": 2,
    }  # fmt: skip
    assert fake_vllm.environ_at_start[1] == "0"


def test_vllm_prompt_longer_than_max_model_len_is_refused_before_generating(fake_vllm, checkpoint, tmp_path):
    write_jsonl(tmp_path / "p.jsonl", prompt_records(3))
    with pytest.raises(ValueError, match="selfgen.max_model_len=10 is shorter than prompt"):
        self_generate(checkpoint, tmp_path / "p.jsonl", tmp_path / "o.jsonl", 8, 0.9, 0.95, 2, 0,
                      backend="vllm", max_model_len=10)  # fmt: skip
    assert fake_vllm.requests == [] and not (tmp_path / "o.jsonl").exists()


def test_batch_invariance_on_a_gpu_older_than_ampere_is_refused(fake_vllm, monkeypatch, checkpoint, tmp_path):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    write_jsonl(tmp_path / "p.jsonl", prompt_records(2))
    with pytest.raises(RuntimeError, match="compute capability >= 8.0, this one is 7.0"):
        self_generate(checkpoint, tmp_path / "p.jsonl", tmp_path / "o.jsonl", 8, 0.9, 0.95, 2, 0, backend="vllm")
    assert fake_vllm.engines == []


# --------------------------------------------------------------------------- batching, counts


def test_batched_greedy_equals_one_prompt_at_a_time(checkpoint, tmp_path):
    """Left padding with the attention mask and position ids leaves greedy outputs unchanged."""
    write_jsonl(tmp_path / "p.jsonl", prompt_records(12))
    settings = dict(max_new_tokens=8, temperature=0.0, top_p=1.0, seed=0, dtype="float32", backend="transformers")
    self_generate(checkpoint, tmp_path / "p.jsonl", tmp_path / "batched.jsonl", batch_size=6, **settings)
    self_generate(checkpoint, tmp_path / "p.jsonl", tmp_path / "single.jsonl", batch_size=1, **settings)
    assert (tmp_path / "batched.jsonl").read_bytes() == (tmp_path / "single.jsonl").read_bytes()


@pytest.mark.parametrize("family", FAMILIES)
def test_shrinking_batch_decoder_matches_generate_on_every_family(family, tmp_path):
    """Finished rows leave the batch and its KV cache; the answers stay those of plain `generate`,
    sliding-window families included (tiny windows of 4 tokens, prompts longer than that)."""
    path = boost_eos(
        make_tiny_checkpoint(tmp_path / family, family=family, num_layers=3, chat_template=CHAT_TEMPLATE), 0.15
    )
    records = prompt_records(8)
    write_jsonl(tmp_path / "p.jsonl", records)
    settings = dict(max_new_tokens=6, temperature=0.0, top_p=1.0, batch_size=8, seed=0, dtype="float32")
    self_generate(path, tmp_path / "p.jsonl", tmp_path / "out.jsonl", backend="transformers", **settings)
    got = [r["completion"][0]["content"] for r in read_jsonl(tmp_path / "out.jsonl")]
    reference = reference_greedy(path, records, 6)
    assert got == [text for text, _ in reference]
    stats = read_json(tmp_path / "out.stats.json")
    # Rows left the batch at different steps: some ended while others went on.
    assert stats["truncated"] < len(records) and stats["empty"] < len(records)
    assert len({len(text.split()) for text in got}) > 1


def reference_greedy(checkpoint: Path, records: list[dict], max_new_tokens: int) -> list[tuple[str, bool]]:
    """Each prompt alone through plain `generate`: (text, truncated)."""
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    results = []
    for record in records:
        ids = torch.tensor([prompt_token_ids(tokenizer, record["prompt"])])
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0)
        new = out[0, ids.shape[1] :].tolist()
        cut = new.index(EOS_ID) if EOS_ID in new else None
        results.append((tokenizer.decode(new[:cut], skip_special_tokens=True).strip(), cut is None))
    return results


def test_empty_and_truncated_responses_are_counted_and_dropped_on_request(eos_checkpoint, tmp_path):
    records = prompt_records(16)
    write_jsonl(tmp_path / "p.jsonl", records)
    reference = reference_greedy(eos_checkpoint, records, 3)
    empty = {i for i, (text, _) in enumerate(reference) if not text}
    truncated = {i for i, (_, cut) in enumerate(reference) if cut}
    assert empty and truncated and len(empty | truncated) < len(records), "the EOS model must give all three kinds"
    settings = dict(max_new_tokens=3, temperature=0.0, top_p=1.0, batch_size=5, seed=0, dtype="float32")
    for drop_empty, drop_truncated in ((False, False), (True, False), (False, True), (True, True)):
        out = tmp_path / f"{drop_empty}-{drop_truncated}.jsonl"
        count = self_generate(
            eos_checkpoint, tmp_path / "p.jsonl", out, drop_empty=drop_empty, drop_truncated=drop_truncated, **settings
        )
        dropped = (empty if drop_empty else set()) | (truncated if drop_truncated else set())
        kept = [i for i in range(len(records)) if i not in dropped]
        generated = read_jsonl(out)
        assert count == len(generated) == len(kept)
        assert [g["source"] for g in generated] == [records[i]["source"] for i in kept]
        assert [g["completion"][0]["content"] for g in generated] == [reference[i][0] for i in kept]
        stats = read_json(out.with_name(out.stem + ".stats.json"))
        assert (stats["empty"], stats["truncated"]) == (len(empty), len(truncated))
        assert (stats["total"], stats["dropped"], stats["kept"]) == (len(records), len(dropped), len(kept))


# --------------------------------------------------------------------------- resumption

KILL_DRIVER = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    from layerprune.data.selfgen import self_generate
    model, prompts, out, kill_after = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    seen = []
    def on_batch(number, indices, generations):
        seen.append(number)
        if len(seen) == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no exception handlers: a real kill
    self_generate(model, prompts, out, max_new_tokens=6, temperature=1.0, top_p=0.9, batch_size=3, seed=5,
                  dtype="float32", backend="transformers", on_batch=on_batch)
    """
)
SAMPLED = dict(max_new_tokens=6, temperature=1.0, top_p=0.9, batch_size=3, seed=5, dtype="float32")


@pytest.mark.slow  # over 8 s on 2 cores (--durations, 2026-12-07)
def test_killed_generation_resumes_and_equals_an_uninterrupted_run(checkpoint, tmp_path):
    records = prompt_records(14)  # 5 batches of 3
    write_jsonl(tmp_path / "p.jsonl", records)
    self_generate(checkpoint, tmp_path / "p.jsonl", tmp_path / "full.jsonl", **SAMPLED)

    out = tmp_path / "resumed" / "sgr.jsonl"
    (tmp_path / "driver.py").write_text(KILL_DRIVER)
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    args = [str(checkpoint), str(tmp_path / "p.jsonl"), str(out), "2"]
    killed = subprocess.run([sys.executable, str(tmp_path / "driver.py"), *args], env=env, capture_output=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    assert not out.exists(), "a killed run must not leave the finished output"
    lines = partial_path(out).read_text().splitlines()
    assert len(lines) == 1 + 2 * 3, "header + two fsync'ed batches"
    # A torn write from the dying process: half a record at the end.
    with open(partial_path(out), "a") as handle:
        handle.write('{"index": 13, "te')

    regenerated = []
    count = self_generate(
        checkpoint, tmp_path / "p.jsonl", out, on_batch=lambda number, *_: regenerated.append(number), **SAMPLED
    )
    assert count == len(records)
    assert len(regenerated) == 3, "only the three unfinished batches are generated again"
    assert out.read_bytes() == (tmp_path / "full.jsonl").read_bytes()
    assert not partial_path(out).exists()
    assert read_json(out.with_name("sgr.stats.json"))["resumed_records"] == 6


def test_partial_file_from_other_settings_is_not_reused(checkpoint, tmp_path):
    write_jsonl(tmp_path / "p.jsonl", prompt_records(6))
    out = tmp_path / "o.jsonl"

    def stop_after_first(number, indices, generations):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        self_generate(checkpoint, tmp_path / "p.jsonl", out, on_batch=stop_after_first, **SAMPLED)
    assert partial_path(out).is_file() and not out.exists()
    regenerated = []
    changed = {**SAMPLED, "seed": 6}
    self_generate(checkpoint, tmp_path / "p.jsonl", out, on_batch=lambda n, *_: regenerated.append(n), **changed)
    assert len(regenerated) == 2, "a different seed starts over"
    self_generate(checkpoint, tmp_path / "p.jsonl", tmp_path / "fresh.jsonl", **changed)
    assert out.read_bytes() == (tmp_path / "fresh.jsonl").read_bytes()


def test_batch_seeds_are_distinct_and_stable():
    seeds = [batch_seed(0, b) for b in range(100)] + [batch_seed(1, b) for b in range(100)]
    assert len(set(seeds)) == 200 and all(0 <= s < 2**63 for s in seeds)
    assert batch_seed(0, 7) == batch_seed(0, 7)


# --------------------------------------------------------------------------- Magpie


def test_magpie_user_prefix_is_the_template_up_to_the_user_text(checkpoint):
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    assert magpie_user_prefix(tokenizer) == ("<bos> ", " <eos> ")
    assert magpie_user_prefix(tokenizer, "be brief") == ("<bos> be brief <eos> <bos> ", " <eos> ")
    tokenizer.chat_template = CHATML
    assert magpie_user_prefix(tokenizer, "sys") == (
        "<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\n",
        "<|im_end|>\n",
    )


def test_near_duplicate_filter():
    assert shingles("The quick, brown FOX!", 2) == {("the", "quick"), ("quick", "brown"), ("brown", "fox")}
    dedup = NearDuplicateFilter(0.5, ngram=2)
    assert dedup.add("What is the capital of France?")
    assert not dedup.add("what is the capital of france"), "same text up to case and punctuation"
    assert not dedup.add("What is the capital of France, please?"), "5 of 6 bigrams shared"
    assert dedup.add("Write a poem about the sea.")
    assert dedup.add("Hi")


def test_magpie_writes_distinct_questions_without_answers(eos_checkpoint, tmp_path):
    out, stats_path = tmp_path / "magpie.jsonl", tmp_path / "magpie.stats.json"
    settings = dict(num_prompts=5, max_new_tokens=12, temperature=1.0, top_p=1.0, batch_size=8, seed=0)
    stats = magpie_prompts(
        eos_checkpoint,
        out,
        stats_path,
        dedup_threshold=0.5,
        ngram=2,
        system_prompt="be brief",
        dtype="float32",
        **settings,
    )
    records = read_jsonl(out)
    assert stats == read_json(stats_path)
    assert stats["kept"] == len(records) == 5
    dropped = stats["empty"] + stats["truncated"] + stats["too_long"] + stats["near_duplicate"]
    assert stats["candidates"] >= stats["kept"] + dropped
    assert stats["pre_query_template"] == "<bos> be brief <eos> <bos> "
    questions = [r["prompt"][-1]["content"] for r in records]
    for record, question in zip(records, questions, strict=True):
        assert set(record) == {"prompt", "source"}
        assert record["prompt"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": question}]
        assert question and "<eos>" not in question and "<bos>" not in question
    dedup = NearDuplicateFilter(0.5, ngram=2)
    assert all(dedup.add(q) for q in questions), "no two kept questions are near-duplicates"
    # Seeded: the same settings write the same file.
    magpie_prompts(
        eos_checkpoint,
        tmp_path / "again.jsonl",
        tmp_path / "again.json",
        dedup_threshold=0.5,
        ngram=2,
        system_prompt="be brief",
        dtype="float32",
        **settings,
    )
    assert (tmp_path / "again.jsonl").read_bytes() == out.read_bytes()
    # ... and the questions can be answered like any prompt set.
    count = self_generate(eos_checkpoint, out, tmp_path / "answers.jsonl", 4, 0.0, 1.0, 4, 0, dtype="float32")
    assert count == 5


def test_magpie_greedy_collapses_to_one_question(eos_checkpoint, tmp_path):
    """Greedy sampling of one prefix repeats one question: the filter keeps it once and counts the rest."""
    settings = dict(max_new_tokens=12, temperature=0.0, top_p=1.0, batch_size=4, seed=0, dtype="float32")
    stats = magpie_prompts(
        eos_checkpoint,
        tmp_path / "g.jsonl",
        tmp_path / "g.json",
        num_prompts=3,
        dedup_threshold=0.9,
        max_candidates=8,
        system_prompt="hello world",
        **settings,
    )
    assert (stats["kept"], stats["near_duplicate"], stats["candidates"]) == (1, 7, 8)
    # Without a system message this model ends the user turn at once: nothing to keep is an error.
    with pytest.raises(ValueError, match="Magpie kept no question out of 8 candidates"):
        magpie_prompts(
            eos_checkpoint,
            tmp_path / "e.jsonl",
            tmp_path / "e.json",
            num_prompts=3,
            dedup_threshold=0.9,
            max_candidates=8,
            **settings,
        )


# --------------------------------------------------------------------------- nothing silently mixed or dropped


def test_partial_file_of_a_model_replaced_at_the_same_path_is_not_reused(tmp_path, monkeypatch):
    """A killed selfgen, resumed after the model at its path changed, starts over: no old answers are mixed in."""
    monkeypatch.setenv("LAYERPRUNE_CACHE_DIR", str(tmp_path / "cache"))
    model = make_tiny_checkpoint(tmp_path / "m", num_layers=2, seed=0, chat_template=CHAT_TEMPLATE)
    write_jsonl(tmp_path / "p.jsonl", prompt_records(6))
    out = tmp_path / "o.jsonl"

    def stop_after_first(number, indices, generations):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        self_generate(model, tmp_path / "p.jsonl", out, on_batch=stop_after_first, **SAMPLED)
    assert partial_path(out).is_file()
    # Same path, same config and tokenizer, other weights (e.g. the model re-materialized from another source).
    replacement = make_tiny_checkpoint(tmp_path / "other", num_layers=2, seed=1)
    (replacement / "model.safetensors").replace(model / "model.safetensors")
    regenerated = []
    self_generate(model, tmp_path / "p.jsonl", out, on_batch=lambda n, *_: regenerated.append(n), **SAMPLED)
    assert len(regenerated) == 2, "every batch is generated again by the new model"
    self_generate(model, tmp_path / "p.jsonl", tmp_path / "fresh.jsonl", **SAMPLED)
    assert out.read_bytes() == (tmp_path / "fresh.jsonl").read_bytes()


def test_prompt_set_cut_short_is_named(checkpoint, tmp_path):
    """A prompt set cut mid-line, or at a line boundary below the count its writer recorded, is an error naming it."""
    from layerprune.data.sources import filter_prompt_set

    prompts = tmp_path / "prompts" / "m.jsonl"
    prompts.parent.mkdir()
    write_jsonl(tmp_path / "all.jsonl", prompt_records(8))
    filter_prompt_set(tmp_path / "all.jsonl", checkpoint, None, prompts, prompts.with_name("m.stats.json"))
    lines = prompts.read_text().splitlines(keepends=True)

    prompts.write_text("".join(lines[:4]) + lines[4][: len(lines[4]) // 2])
    with pytest.raises(ValueError, match=r"m\.jsonl: line 5 is not valid JSON \(.*cut mid-line\)"):
        self_generate(checkpoint, prompts, tmp_path / "o.jsonl", **SAMPLED)
    prompts.write_text("".join(lines[:4]))
    with pytest.raises(ValueError, match=r"m\.jsonl: has 4 records, but .*m\.stats\.json records 8"):
        self_generate(checkpoint, prompts, tmp_path / "o.jsonl", **SAMPLED)
    assert not (tmp_path / "o.jsonl").exists()


# ------------------------------------------------------------ token-budget batches


def test_token_budget_bounds_every_batch_and_runs_the_longest_first():
    """paper.yaml's batch 64 with prompts up to 8000 tokens would prefill 64 x 9k tokens at once."""
    from layerprune.data.selfgen import Generation, generate_responses, length_sorted_batches

    lengths = [8000, 10, 20, 4000, 30, 3000, 8000, 15]
    assert length_sorted_batches(lengths, 4) == [[1, 7, 2, 4], [5, 3, 0, 6]]  # batch_size alone: unchanged
    batches = length_sorted_batches(lengths, 4, max_tokens=10_000, new_tokens=1000)
    assert batches == [[1, 7, 2, 4], [5, 3], [0], [6]]
    for batch in batches:
        assert len(batch) == 1 or len(batch) * (max(lengths[i] for i in batch) + 1000) <= 10_000
    seen: list[list[str]] = []

    def generator(texts: list[str], seed: int) -> list[Generation]:
        seen.append(texts)
        return [Generation(f"{text}:{seed}", False) for text in texts]

    texts = [f"p{i}" for i in range(len(lengths))]
    outputs = generate_responses(generator, texts, lengths, 4, 0, max_batch_tokens=10_000, max_new_tokens=1000)
    assert seen[0] == ["p6"] and seen[-1] == ["p1", "p7", "p2", "p4"]  # longest first: an OOM shows at once
    # each batch keeps its own seed (its number), so the order changes no output
    assert outputs[0].text == f"p0:{batch_seed(0, 2)}" and outputs[1].text == f"p1:{batch_seed(0, 0)}"
