"""CPU threads for model callers: an even share of the cores where several share a machine,
--threads where given, set where the model loads (the TEE handler, caption, evaluate_captions)."""
import pytest
import torch
from apache_beam.options.pipeline_options import PipelineOptions

from models.threads import threads_per_caller, usable_cpus, use_threads
from pipelines import caption
from pipelines.beam.handlers import HandlerOptions, TEEHandler
from pipelines.beam.jobrun import model_callers


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("callers,cpus,expected", [
    (1, 8, 8), (2, 8, 4), (3, 8, 2), (8, 8, 1), (16, 8, 1), (None, 8, 1), (1, 1, 1), (2, 2, 1),
])
def test_callers_share_the_cores_evenly(callers, cpus, expected):
    assert threads_per_caller(callers, cpus) == expected


@pytest.mark.parametrize("callers,cpus", [(0, 4), (-1, 4), (1, 0)])
def test_impossible_shares_are_refused(callers, cpus):
    with pytest.raises(ValueError):
        threads_per_caller(callers, cpus)


def test_usable_cpus_is_this_process_affinity():
    import os

    assert usable_cpus() == len(os.sched_getaffinity(0)) >= 1


def test_use_threads_sets_torch_and_refuses_zero():
    assert use_threads(1) == torch.get_num_threads() == 1
    with pytest.raises(ValueError, match="threads must be >= 1"):
        use_threads(0)


@pytest.mark.parametrize("options,expected", [
    (HandlerOptions(callers=2), 2),  # 4 cores, 2 worker processes
    (HandlerOptions(callers=1), None),  # a lone caller leaves torch's own setting alone
    (HandlerOptions(callers=None), 1),  # Dataflow: one SDK process per vCPU
    (HandlerOptions(callers=4, threads=3), 3),  # --threads wins
    (HandlerOptions(callers=4, large_model=True), None),  # one shared copy serves every caller
    (HandlerOptions(callers=4, large_model=True, model_copies=2), 2),
])
def test_handler_options_give_each_caller_its_share(options, expected):
    assert options.cpu_threads(cpus=4) == expected


@pytest.mark.parametrize("argv,expected", [
    (["--runner", "DirectRunner"], 1),
    (["--runner", "DirectRunner", "--direct_num_workers", "2", "--direct_running_mode", "multi_processing"], 2),
    (["--runner", "DirectRunner", "--direct_num_workers", "3", "--direct_running_mode", "multi_threading"], 3),
    (["--runner", "DirectRunner", "--direct_num_workers", "0"], usable_cpus()),
    (["--runner", "DataflowRunner"], None),
    (["--runner", "DataflowRunner", "--experiments", "no_use_multiple_sdk_containers"], 1),
])
def test_callers_follow_the_runner(argv, expected):
    options = PipelineOptions(argv)
    assert model_callers(options, options.get_all_options()["runner"]) == expected


def test_tee_handler_sets_the_share_where_it_loads_the_model():
    handler = TEEHandler("tiny", None, HandlerOptions(callers=usable_cpus()))  # every core has a caller
    torch.set_num_threads(2)
    handler.load_model()
    assert torch.get_num_threads() == 1
    TEEHandler("tiny", None, HandlerOptions(threads=3)).load_model()
    assert torch.get_num_threads() == 3
    TEEHandler("tiny", None, HandlerOptions()).load_model()  # alone on the machine: torch's setting stays
    assert torch.get_num_threads() == 3


@pytest.mark.parametrize("flags", [["--threads", "0"], ["--threads", "-2"]])
def test_caption_refuses_no_threads_before_any_work(tmp_path, capsys, flags):
    assert caption.run([str(tmp_path), "--checkpoint", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"caption: error: --threads must be >= 1, not {flags[1]}"]
