"""benchmarks/: the model shapes come from configs/ and match what the recorded results were measured on."""

import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from conftest import assert_close

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
RESULTS = BENCH / "results"


def load_script(name: str) -> ModuleType:
    """Import benchmarks/<name>.py as a module, as `python benchmarks/<name>.py` would (its folder first on sys.path,
    for `model_configs`), restoring sys.path and os.environ afterwards (bench_model sets thread variables)."""
    saved = dict(os.environ)
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
        os.environ.clear()
        os.environ.update(saved)
    return module


@pytest.fixture(scope="module")
def bench_convert() -> ModuleType:
    return load_script("bench_convert")


@pytest.fixture(scope="module")
def model_configs() -> ModuleType:
    return load_script("model_configs")


@pytest.fixture(scope="module")
def bench_model() -> ModuleType:
    return load_script("bench_model")


def test_convert_default_config_is_the_recorded_1gb_checkpoint(bench_convert):
    config = bench_convert.model_config(str(bench_convert.DEFAULT_CONFIG))
    assert bench_convert.DEFAULT_CONFIG == REPO / "configs" / "bench-convert-1b.json"
    recorded = json.loads((RESULTS / "convert.json").read_text())["checkpoint"]
    assert {k: v for k, v in config.items() if k != "architectures"} == recorded["config"]
    tensors = list(bench_convert.hf_tensors(config))
    assert len(tensors) == 2 + 12 * 9 + 1
    # the recorded file sizes are the tensor bytes plus the safetensors headers
    tensor_bytes = sum(2 * int(np.prod(shape)) for _, shape in tensors)
    assert tensor_bytes == 1_073_874_944
    assert 0 < recorded["bytes"] - tensor_bytes < 64 * 1024


@pytest.mark.parametrize("layers, count", [(None, 9), (1, 1), (2, 2)])
def test_convert_layers_override_the_config(bench_convert, layers, count):
    config = bench_convert.model_config("bench-convert-1b", layers)
    assert config["num_hidden_layers"] == count
    assert sum(name.endswith("q_proj.weight") for name, _ in bench_convert.hf_tensors(config)) == count


@pytest.mark.parametrize(
    "name, expected",
    [
        ("small", "configs/small.json"),
        ("tiny", "configs/tiny.json"),
        ("bench-convert-1b", "configs/bench-convert-1b.json"),
        (str(REPO / "configs" / "qwen2.5-0.5b.json"), "configs/qwen2.5-0.5b.json"),
    ],
)
def test_config_names_and_paths_resolve_to_configs(model_configs, name, expected):
    assert model_configs.config_path(name).resolve() == REPO / expected


@pytest.mark.parametrize("name", ["no-such-config", "configs/missing.json", ""])
def test_unknown_config_is_a_clear_error(model_configs, name):
    with pytest.raises(SystemExit, match="no such file, and not a config in configs/ .*small"):
        model_configs.config_path(name)


# the shapes the README's benchmark tables describe; `tiny` is the quick-look config
MODEL_CONFIGS = {
    "small": dict(
        hidden_size=512,
        intermediate_size=1408,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=2,
        vocab_size=8192,
        rope_theta=1000000.0,
        tie_word_embeddings=False,
    ),
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
        rope_theta=1000000.0,
        tie_word_embeddings=False,
    ),
}


@pytest.mark.parametrize("name", sorted(MODEL_CONFIGS))
def test_model_bench_configs_fit_every_workload(bench_model, name):
    cfg = bench_model.config_dict(name)
    assert {k: cfg[k] for k in MODEL_CONFIGS[name]} == MODEL_CONFIGS[name]
    assert not {"architectures", "torch_dtype", "transformers_version"} & set(cfg)
    # the longest sequence: prefill_1x512 (paddle_qwen2 refuses positions past max_position_embeddings)
    assert cfg["max_position_embeddings"] >= 512
    assert set(bench_model.WORKLOADS) == {
        "prefill_1x512",
        "prefill_4x256",
        "decode_16+64",
        "train_4x256",
        "embed_32x64",
    }


@pytest.fixture(scope="module")
def bench_inference() -> ModuleType:
    return load_script("bench_inference")


def test_inference_weight_bytes_are_every_weight_but_the_embedding_table(bench_inference, model_configs):
    config = model_configs.load_config("small")
    # 8 layers of 2,819,840 parameters, the final norm, the lm_head [512, 8192] and one embedding row; fp32
    expected = 4 * (8 * 2_819_840 + 512 + 512 * 8192 + 512)
    assert bench_inference.weight_bytes_per_token(config) == expected
    # a tied lm_head is read whole all the same
    assert bench_inference.weight_bytes_per_token(dict(config, tie_word_embeddings=True)) == expected
    recorded = json.loads((RESULTS / "inference.json").read_text())
    assert recorded["memory_bandwidth"]["weight_bytes_per_token"] == expected
    assert recorded["config"] == "small" and recorded["dtype"] == "float32"


def test_inference_table_shows_every_implementation_and_target(bench_inference):
    recorded = json.loads((RESULTS / "inference.json").read_text())
    table = bench_inference.table(recorded)
    for name in [*recorded["decode"], *recorded["embed"]]:
        assert bench_inference.LABELS[name] in table
    assert set(recorded["prefill"]) == set(bench_inference.PREFILL) == {"prefill_1x512", "prefill_4x256"}
    assert [t["target"] for t in recorded["targets"]] == [0.70, 0.85, 0.85, 1.2]
    assert table.count("| decode: ") == 1 and table.count(": engine time / HF sdpa time |") == 2


def test_read_probe_measures_one_and_all_thread_read_bandwidth():
    """benchmarks/bandwidth.py on a small array: every kernel, both thread counts, sane GB/s; the passes split
    across threads read at least about as fast as one thread (best of several passes: the machine is shared)."""
    bandwidth = load_script("bandwidth")
    probe = bandwidth.ReadProbe(32 << 20)
    assert probe.kernels == ("numpy", "torch") and probe.nbytes == 32 << 20
    result = bandwidth.read_bandwidth(2, repeats=25, probe=probe)
    assert result["bytes"] == 32 << 20 and result["threads"] == 2
    assert len(result["one_thread"]["runs"]) == len(result["all_threads"]["runs"]) == 50
    for which in ("one_thread", "all_threads"):
        assert 0.5 < result[which]["min"] <= result[which]["median"] <= result[which]["best"] < 5000, result[which]
        assert result[which]["best"] == max(result["by_kernel"][k][which] for k in ("numpy", "torch"))
    assert result["all_threads"]["best"] >= 0.8 * result["one_thread"]["best"], result
    with pytest.raises(ValueError, match="threads must be >= 1, got 0"):
        probe.pass_seconds(0)
    with pytest.raises(ValueError, match=r"unknown kernel\(s\) \['copy'\]"):
        bandwidth.ReadProbe(1024, kernels=("copy",))


def test_inference_limit_is_weight_bytes_over_the_read_bandwidth(bench_inference):
    def probe(one: list[float], many: list[float]) -> dict:
        best = {"one_thread": max(one), "all_threads": max(many)}
        return {
            "bytes": 2**30,
            "threads": 2,
            "kernels": ["numpy"],
            "by_kernel": {"numpy": best},
            "one_thread": {"runs": one},
            "all_threads": {"runs": many},
        }

    bw = bench_inference.memory_bandwidth(
        [probe([10.0, 12.0], [20.0, 25.0]), probe([11.0, 9.0], [30.0, 18.0])], 10**8, ""
    )
    assert (bw["read_gb_per_s"], bw["read_gb_per_s_one_thread"], bw["all_threads"]["median"]) == (30.0, 12.0, 22.5)
    assert bw["limit_tokens_per_s"] == pytest.approx(300.0)
    assert bw["one_thread_limit_tokens_per_s"] == pytest.approx(120.0)
    assert bw["by_kernel"] == {"numpy": {"one_thread": 12.0, "all_threads": 30.0}}
    row = {"tokens_per_s": 150.0, "best_tokens_per_s": 180.0, "decode_loop_tokens_per_s": 240.0}
    decode = {"engine": dict(row, copy_seconds=[0.006], fraction_of_run_limit=0.9)}  # keys of the older layout
    bench_inference.apply_limit(decode, bw["limit_tokens_per_s"])
    fractions = {"fraction_of_limit": 0.5, "best_fraction_of_limit": 0.6, "decode_loop_fraction_of_limit": 0.8}
    assert decode["engine"] == pytest.approx(dict(row, **fractions))


def test_inference_results_and_table_state_the_read_bandwidth_limit(bench_inference):
    recorded = json.loads((RESULTS / "inference.json").read_text())
    bw = recorded["memory_bandwidth"]
    assert bw["read_gb_per_s"] == max(bw["one_thread"]["best"], bw["all_threads"]["best"])
    assert bw["limit_tokens_per_s"] == pytest.approx(bw["read_gb_per_s"] * 1e9 / bw["weight_bytes_per_token"])
    for row in recorded["decode"].values():
        assert row["fraction_of_limit"] == pytest.approx(row["tokens_per_s"] / bw["limit_tokens_per_s"])
        assert not {"copy_seconds", "fraction_of_run_limit"} & set(row)
    assert recorded["targets"][0]["value"] == recorded["decode"]["engine"]["fraction_of_limit"]
    table = bench_inference.table(recorded)
    assert f"the machine reads {bw['read_gb_per_s']:.1f} GB/s (best pass; {bw['threads']} threads " in table
    assert f"limit **{bw['limit_tokens_per_s']:.0f} tokens/s**" in table
    engine = recorded["decode"]["engine"]
    assert f"| {engine['tokens_per_s']:.1f} | **{engine['fraction_of_limit'] * 100:.0f}%** |" in table
    assert "| decode: engine % of the read-bandwidth limit |" in table and "copyto" not in table
    limit_ms = 1000 / bw["limit_tokens_per_s"]
    assert f"{sum(engine['step_parts_ms'].values()):.2f} ms (median; the program run " in table
    assert f"against the read-bandwidth limit's {limit_ms:.2f} ms (of one thread's reads: " in table


def test_inference_verdicts_say_met_or_by_how_much(bench_inference):
    decode = {"engine": {"fraction_of_limit": 0.6, "best_fraction_of_limit": 0.75}}
    prefill = {
        "prefill_1x512": {"engine": {"time_vs_hf_sdpa": 1.7, "best_time_vs_hf_sdpa": 1.4}},
        "prefill_4x256": {"engine": {"time_vs_hf_sdpa": 0.6, "best_time_vs_hf_sdpa": 0.5}},
    }
    embed = {
        "embed_engine": {"speed_vs_sentence_transformers": 2.0, "best_texts_per_s": 130},
        "embed_st": {"best_texts_per_s": 65},
    }
    notes = [t["note"] for t in bench_inference.verdicts(decode, prefill, embed)]
    assert notes == [
        "missed by 10 percentage points (best runs: 75%, met)",
        "missed: needs 2.00x the speed (best runs: 1.40x)",
        "met",
        "met",
    ]


def test_inference_step_parts_drive_the_engines_own_step(bench_inference, chat_checkpoint):
    """bench_inference.py's split of one decode step drives the engine's step function as `LLM.decode` does
    (otherwise only `make bench` would run it): its prefill and steps give the logits of `LLM.prefill` and greedy
    `LLM.decode` steps; each part is a duration in ms."""
    from paddle_qwen2.inference import LLM

    llm = LLM.from_pretrained(chat_checkpoint("gqa"))
    prompt, steps = [17, 230, 1201, 9], 3
    seen, step = [], llm.step

    def recording_step(inputs, owner):
        logits, cache = step(inputs, owner)
        seen.append(np.array(logits.numpy()))
        return logits, cache

    llm.step = recording_step
    parts = bench_inference.engine_step_parts(llm, prompt, steps)
    llm.step = step
    assert set(parts) == {"inputs", "program_run", "logits_numpy", "argmax"}
    assert all(isinstance(ms, float) and 0 <= ms < 60_000 for ms in parts.values()), parts

    logits, batch = llm.prefill([prompt])
    expected = [logits]
    for _ in range(steps):
        logits = llm.decode(batch, [int(logits[0].argmax())])
        expected.append(logits)
    assert len(seen) == 1 + steps
    for i, (got, want) in enumerate(zip(seen, expected)):
        assert_close(got, want, what=f"run {i} (0: the prefill)")


@pytest.mark.slow
def test_serve_bench_quick_run(tmp_path):
    """bench_serve.py --quick: a real server on a tiny config, 1 and 4 streaming clients, no errors, exit 0."""
    import subprocess

    out = tmp_path / "serve.json"
    done = subprocess.run(
        [sys.executable, str(BENCH / "bench_serve.py"), "--quick", "--workdir", str(tmp_path / "w"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert {"1", "4"} <= set(result["levels"])
    assert all(result["levels"][n]["errors"] == 0 for n in ("1", "4"))
    assert result["server_exit_code"] == 0


# ------------------------------------------------------------------------- the real-size section (bench_precision)


@pytest.fixture(scope="module")
def bench_precision() -> ModuleType:
    return load_script("bench_precision")


def test_precision_step_bytes_count_every_weight_a_step_reads(bench_precision, bench_inference, model_configs):
    config = model_configs.load_config("qwen2.5-0.5b")
    # Qwen2.5-0.5B: 494,032,768 parameters (the head tied to the embeddings); a step reads them all and one row
    assert bench_precision.engine_step_bytes(config, "float32") == 4 * (494_032_768 + 896)
    assert bench_precision.engine_step_bytes(config, "float32") == bench_inference.weight_bytes_per_token(config)
    counts = bench_precision.parameter_counts(config)
    assert bench_precision.engine_step_bytes(config, "bfloat16") == 2 * counts["matmul"] + 4 * counts["other"]
    # n bits and a float32 scale per block (the nominal block of 32 when the export records none)
    int8 = bench_precision.engine_step_bytes(config, "int8", {"bits": 8, "block_size": 64})
    assert int8 == int(counts["matmul"] * (1 + 4 / 64) + 4 * counts["other"])
    int4 = bench_precision.engine_step_bytes(config, "int4")
    assert int4 == int(counts["matmul"] * (0.5 + 4 / 32) + 4 * counts["other"])


def test_precision_logits_errors_are_against_float32_of_the_same_runtime(bench_precision, tmp_path):
    rng = np.random.RandomState(0)
    (tmp_path / "logits").mkdir()
    base = rng.standard_normal((4, 50)).astype(np.float32)
    saved = {"float32": base, "int8": base * 1.01, "llama_f32": base, "llama_q4_0": base * 0.9, "hf": base}
    for name, logits in saved.items():
        np.save(tmp_path / "logits" / f"{name}.npy", logits)
    errors = bench_precision.relative_errors(tmp_path)
    assert set(errors) == {"int8", "llama_f32", "llama_q4_0", "hf"}
    assert errors["int8"]["against"] == "float32" and errors["int8"]["max"] == pytest.approx(0.01, rel=1e-5)
    assert errors["llama_q4_0"]["against"] == "llama_f32" and errors["llama_q4_0"]["max"] == pytest.approx(0.1)
    assert errors["llama_f32"]["against"] == "float32" and errors["llama_f32"]["max"] == 0


def test_precision_table_shows_rows_refusals_and_verdicts(bench_precision):
    def row(name: str, tokens_per_s: float, rows_per_s: float, prefill: float) -> dict:
        return {
            "label": bench_precision.LABELS[name],
            "decode_1": {"tokens_per_s": tokens_per_s, "best_tokens_per_s": tokens_per_s * 1.1},
            "decode_rows": {"tokens_per_s": rows_per_s, "best_tokens_per_s": rows_per_s},
            "prefill_1x512": {"seconds": prefill, "best_seconds": prefill},
            "peak_rss_mb": 1000.0,
            "limit_tokens_per_s": 40.0,
            "fraction_of_limit": tokens_per_s / 40.0,
        }

    rows = {
        "hf": row("hf", 5.0, 20.0, 3.0),
        "float32": row("float32", 10.0, 50.0, 2.0),
        "int8": dict(row("int8", 30.0, 60.0, 2.5), logits_error={"against": "float32", "max": 0.004, "mean": 0.003}),
        "int4": {"label": bench_precision.LABELS["int4"], "refused": "EngineError: int4 needs onnxruntime"},
        "llama_f32": row("llama_f32", 15.0, 40.0, 2.8),
        "llama_q8_0": row("llama_q8_0", 40.0, 55.0, 2.0),
    }
    targets = bench_precision.verdicts(rows)
    by_what = {t["what"]: t for t in targets}
    f32 = by_what["decode 1 stream, float32: engine tokens/s / llama.cpp f32's"]
    assert f32["row"] == "float32" and f32["value"] == pytest.approx(10 / 15) and f32["met"] is False
    assert by_what["decode 8 rows, int8: engine tokens/s / llama.cpp Q8_0's"]["met"] is True
    assert by_what["prefill 1x512, engine int8: time / engine float32's"]["met"] is False
    assert by_what["relative logits error, engine int8 vs engine float32"]["met"] is True
    assert by_what["decode 1 stream, int4: engine tokens/s / llama.cpp Q4_0's"]["met"] is None
    # medians and best runs that disagree judge nothing
    noisy = dict(rows, llama_f32=dict(rows["llama_f32"], decode_1={"tokens_per_s": 8.0, "best_tokens_per_s": 16.0}))
    unclear = {t["what"]: t for t in bench_precision.verdicts(noisy)}
    assert unclear["decode 1 stream, float32: engine tokens/s / llama.cpp f32's"]["met"] is None
    result = {
        "config": "qwen2.5-0.5b",
        "threads": 2,
        "machine": {"cores": 2, "cpu": "test CPU"},
        "settings": {"repeats": 2, "new_tokens": 64},
        "memory_bandwidth": {"read_gb_per_s": 30.0, "threads": 2},
        "load_average": {"before": [1.0], "after": [1.0]},
        "rows": rows,
        "targets": targets,
    }
    text = bench_precision.table(result)
    assert "| engine int8 | **30.0** (33.0) | 6.00x | 40 (75%) | 60.0 (60.0) | 2.50 s (2.50) | 1000 MB | 0.40%" in text
    assert "- engine int4: EngineError: int4 needs onnxruntime" in text
    assert (
        "| decode 1 stream, float32: engine tokens/s / llama.cpp f32's | 0.67x | 0.67x | >= 1.00x | **missed** |"
        in text
    )


def test_precision_recorded_results_render_every_row(bench_precision):
    path = RESULTS / "precision.json"
    recorded = json.loads(path.read_text())
    text = bench_precision.table(recorded)
    assert recorded["config"] == "qwen2.5-0.5b" and set(recorded["rows"]) <= set(bench_precision.ROW_NAMES)
    for row in recorded["rows"].values():
        assert row["label"] in text
        if "decode_1" in row:
            bw = recorded["memory_bandwidth"]["read_gb_per_s"]
            assert row["limit_tokens_per_s"] == pytest.approx(bw * 1e9 / row["step_bytes"])


def test_llama_cpp_converter_is_taken_from_the_sdist(tmp_path):
    """llama_cpp_peer.converter_folder unpacks only the converter's parts of a llama-cpp-python sdist."""
    import tarfile

    peer = load_script("llama_cpp_peer")
    vendor = tmp_path / "src" / "llama_cpp_python-0.3.36" / "vendor" / "llama.cpp"
    for name in ("convert_hf_to_gguf.py", "conversion/base.py", "gguf-py/gguf/__init__.py", "src/llama.cpp"):
        (vendor / name).parent.mkdir(parents=True, exist_ok=True)
        (vendor / name).write_text("# " + name)
    sdist = tmp_path / "llama_cpp_python-0.3.36.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        tar.add(tmp_path / "src" / "llama_cpp_python-0.3.36", "llama_cpp_python-0.3.36")
    folder = peer.converter_folder(sdist, tmp_path / "unpacked")
    assert folder == tmp_path / "unpacked"
    assert (folder / "convert_hf_to_gguf.py").read_text() == "# convert_hf_to_gguf.py"
    assert (folder / "conversion" / "base.py").is_file() and (folder / "gguf-py" / "gguf" / "__init__.py").is_file()
    assert not (folder / "src").exists()
    assert peer.converter_folder(tmp_path / "src" / "llama_cpp_python-0.3.36", tmp_path / "x") == vendor
    with pytest.raises(peer.PeerError, match="neither the llama-cpp-python sdist"):
        peer.converter_folder(tmp_path, tmp_path / "y")


def test_precision_onnx_step_bytes_read_a_gathered_table_one_row(bench_precision, tmp_path):
    """An ONNX decode export's step bytes: every initializer, a table that only Gather reads one row of."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    table = numpy_helper.from_array(np.zeros((100, 8), np.float32), "table")  # Gather only: one row, 32 bytes
    head = numpy_helper.from_array(np.zeros((8, 100), np.float32), "head")  # MatMul: 3,200 bytes
    packed = numpy_helper.from_array(np.zeros((100, 1, 16), np.uint8), "packed")  # n-bit blocks: 1,600 bytes
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["x"]),
        helper.make_node("MatMul", ["x", "head"], ["y"]),
        helper.make_node("Identity", ["packed"], ["z"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 1])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "z")],
        initializer=[table, head, packed],
    )
    onnx.save(helper.make_model(graph), str(tmp_path / "model.onnx"))
    (tmp_path / "export_meta.json").write_text(json.dumps({"files": {"onnx": "model.onnx"}}))
    assert bench_precision.onnx_step_bytes(tmp_path) == 32 + 3200 + 1600


# ------------------------------------------------------------------------- corpus-scale embed (bench_embed_corpus)


def test_embed_corpus_recorded_results_hold_their_ratios_and_render():
    """benchmarks/results/embed_corpus.json (the docs table's source): a full run, its ratios recomputed from its
    own runs, and every part in the table."""
    bench = load_script("bench_embed_corpus")
    result = json.loads((RESULTS / "embed_corpus.json").read_text())
    assert not result["quick"] and {"date", "machine", "memory", "processes", "resume"} <= set(result)
    memory = result["memory"]
    small, large = (memory["runs"][str(bench.FULL[k])] for k in ("small", "large"))
    assert memory["ratio"] == pytest.approx(large["peak_rss"] / small["peak_rss"])
    runs, resume = result["processes"]["runs"], result["resume"]
    assert set(runs) == set(bench.PROCESS_SETTINGS) and resume["setting"] == bench.BASELINE
    t0 = runs[bench.BASELINE]["seconds"]
    assert resume["time_lost"] == pytest.approx((resume["killed"]["seconds"] + resume["resumed"]["seconds"] - t0) / t0)
    assert resume["resumed"]["texts"] == resume["texts"] == result["processes"]["texts"]
    table = bench.table(result)
    assert all(name in table for name in runs) and f"**{resume['time_lost']:.1%}**" in table
