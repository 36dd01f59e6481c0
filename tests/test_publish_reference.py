"""scripts/publish_reference.py: tables, config, job timings and provenance copied from a results directory."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import publish_reference  # noqa: E402

BENCH_HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def fake_results(root: Path) -> Path:
    res = root / "results" / "default"
    write(res / "tables" / "main.md", "| a |\n")
    write(res / "tables" / "main.csv", "a\n1\n")
    write(res / "tables" / "ignored.parquet", "x")
    write(res / "config.yaml", "seeds: [42]\n")
    for run, seconds in (("gems", 300.5), ("lora", 120.0), ("gems~rank-64", 290.0)):
        run_dir = res / "runs" / "ml100k" / "smollm2" / run / "seed42"
        write(run_dir / "summary.json", json.dumps({"commit": "abc1234", "load_average": [1.0, 1.1]}))
        write(res / "benchmarks" / "train" / "ml100k" / "smollm2" / run / "seed42.tsv",
              BENCH_HEADER + f"{seconds}\t0:05:00\t7000.5\t9000\t0\t0\t0\t0\t1\t{2 * seconds}\n")
        write(res / "benchmarks" / "evaluate" / "ml100k" / "smollm2" / run / "seed42.tsv",
              BENCH_HEADER + "40.0\t0:00:40\t3000\t4000\t0\t0\t0\t0\t1\t80\n")
    return res


def test_publishes_tables_timings_and_provenance(tmp_path):
    res = fake_results(tmp_path)
    out = tmp_path / "reference"
    publish_reference.main(["--results", str(res), "--out", str(out)])
    assert sorted(p.name for p in (out / "tables").iterdir()) == ["main.csv", "main.md"]
    assert (out / "config.yaml").read_text() == "seeds: [42]\n"
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["trained_at_commits"] == ["abc1234"] and prov["runs"] == 3
    # main_table: gems + lora trainings and evaluations; sensitivity: the sweep run's
    assert prov["wall_seconds_per_target"] == {"main_table": pytest.approx(300.5 + 120 + 80),
                                               "sensitivity": pytest.approx(290 + 40)}
    jobs = (out / "jobs.csv").read_text().splitlines()
    assert len(jobs) == 1 + 6 and "gems~rank-64" in "".join(jobs)


def test_refuses_a_missing_run_and_oversized_tables(tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match="run the DAG first"):
        publish_reference.main(["--results", str(tmp_path / "none"), "--out", str(tmp_path / "ref")])
    res = fake_results(tmp_path)
    monkeypatch.setattr(publish_reference, "MAX_BYTES", 3)
    with pytest.raises(SystemExit, match="must not be committed"):
        publish_reference.main(["--results", str(res), "--out", str(tmp_path / "ref")])
    assert not (tmp_path / "ref").exists()  # nothing half-written


def test_readme_table_reads_means_markers_and_costs_from_the_tables(tmp_path):
    import readme_table

    main = ["dataset,backbone,protocol,run,label,method,task,metric,mean,std,seeds,marker"]
    for protocol in ("sampled", "full"):
        for task, base in (("search", 0.2), ("rec", 0.1)):
            for metric, add in (("ndcg@10", 0.0), ("hr@10", 0.3)):
                main.append(f"d,b,{protocol},lora,LoRA,lora,{task},{metric},{base + add + 0.0004},0,1,"
                            + ("†" if (protocol, task, metric) == ("sampled", "search", "ndcg@10") else ""))
    write(tmp_path / "main.csv", "\n".join(main) + "\n")
    write(tmp_path / "efficiency.csv", "dataset,backbone,device,run,label,method,quantity,mean,std,seeds\n"
          "d,b,cpu,lora,LoRA,lora,seconds_per_step,1.234,0,1\nd,b,cpu,lora,LoRA,lora,targets_per_second,66.6,0,1\n")
    lines = readme_table.table(tmp_path).splitlines()
    assert lines[0] == readme_table.HEADER and len(lines) == 3
    assert lines[2] == "| LoRA | 0.200† | 0.500 | 0.100 | 0.400 | 0.200 | 0.100 | 1.23 | 67 |"


def test_publishes_under_results_published_named_after_the_config(tmp_path, monkeypatch):
    res = fake_results(tmp_path)  # results/default
    monkeypatch.chdir(tmp_path)
    publish_reference.main(["--results", str(res)])
    assert (tmp_path / "results" / "published" / "default" / "tables" / "main.csv").exists()
