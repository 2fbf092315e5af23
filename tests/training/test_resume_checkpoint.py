"""Under DDP one rank decides which checkpoint a training resumes from: rank 0 looks (and alone
removes an incomplete checkpoint), the others take its answer and never look, so ranks on shared
storage with attribute caching cannot resume from different steps. Two real processes (gloo)."""

import json
import os
import socket
from pathlib import Path

import torch.multiprocessing as mp


def _rank(rank: int, port: int, folder: str, answers: str) -> None:
    import torch.distributed as dist

    from tasks.training import run_folder

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        if rank == 1:  # what rank 1's stale view of the folder would say, were it asked
            def stale(_):
                raise AssertionError("rank 1 looked at the folder itself")
            run_folder.last_checkpoint = stale
        chosen = run_folder.resume_checkpoint(folder)
        Path(answers, f"rank{rank}.json").write_text(json.dumps(chosen))
    finally:
        dist.destroy_process_group()


def test_rank_0_chooses_the_checkpoint_every_rank_resumes_from(tmp_path):
    from tasks.training.run_folder import resume_checkpoint

    checkpoints = tmp_path / "checkpoints"
    for step in (4, 8):
        (checkpoints / f"checkpoint-{step}").mkdir(parents=True)
    (checkpoints / "checkpoint-4" / "trainer_state.json").write_text("{}")
    # checkpoint-8 has no trainer state: saved only in part (rank 0 stopped while saving)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_rank, args=(port, str(checkpoints), str(tmp_path)), nprocs=2, join=True)
    expected = str(checkpoints / "checkpoint-4")
    assert [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)] == [expected] * 2
    assert not (checkpoints / "checkpoint-8").exists()  # removed by rank 0
    assert resume_checkpoint(checkpoints) == expected  # one process: it looks itself
