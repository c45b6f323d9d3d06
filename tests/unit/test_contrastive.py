"""The contrastive loss over 2 gloo ranks trains exactly like one process over the whole batch."""
from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from internvideo.models.contrastive import contrastive_loss

BATCH, WORLD = 6, 2


def towers(seed: int = 0) -> tuple[torch.nn.Linear, torch.nn.Linear, torch.nn.Parameter]:
    torch.manual_seed(seed)
    return torch.nn.Linear(10, 8), torch.nn.Linear(12, 8), torch.nn.Parameter(torch.tensor(2.3))


def data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(BATCH * WORLD, 10, generator=generator), torch.randn(BATCH * WORLD, 12, generator=generator)


def gradients(clips, captions, rank: int = 0, world: int = 1) -> list[torch.Tensor]:
    video_tower, text_tower, logit_scale = towers()
    rows = slice(rank * BATCH * WORLD // world, (rank + 1) * BATCH * WORLD // world)
    video = F.normalize(video_tower(clips[rows]), dim=-1)
    text = F.normalize(text_tower(captions[rows]), dim=-1)
    contrastive_loss(video, text, logit_scale.exp().clamp(max=100)).backward()
    grads = [p.grad for p in (*video_tower.parameters(), *text_tower.parameters(), logit_scale)]
    if world > 1:  # what DDP / DeepSpeed do with gradients: average them over ranks
        for grad in grads:
            dist.all_reduce(grad)
            grad /= world
    return grads


def _rank(rank: int, port: int, queue) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        grads = gradients(*data(), rank=rank, world=WORLD)
        queue.put((rank, [g.numpy().copy() for g in grads]))  # by value: the process ends before they are read
        dist.barrier()  # both ranks done before either tears its gloo pairs down
    finally:
        dist.destroy_process_group()
    # Leave without the interpreter's teardown: gloo's background threads, destroyed there, now and then
    # abort the process ("terminate called without an active exception") after all work is done.
    queue.close()
    queue.join_thread()
    os._exit(0)


def test_two_ranks_give_the_gradients_of_one_process_over_the_concatenated_batch():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    context = mp.get_context("spawn")
    queue = context.Queue()
    processes = [context.Process(target=_rank, args=(rank, port, queue)) for rank in range(WORLD)]
    for process in processes:
        process.start()
    results = dict(queue.get(timeout=120) for _ in range(WORLD))
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0

    expected = gradients(*data())
    for rank_grads in results.values():
        for got, want in zip(rank_grads, expected):
            torch.testing.assert_close(torch.from_numpy(got), want, rtol=1e-5, atol=1e-7)
    assert all(g.abs().sum() > 0 for g in expected)


def test_without_gathering_the_gradients_differ():
    """The check above can fail: local-only negatives give other gradients."""
    clips, captions = data()
    video_tower, text_tower, logit_scale = towers()
    half = BATCH
    losses = [contrastive_loss(F.normalize(video_tower(clips[i:i + half]), dim=-1),
                               F.normalize(text_tower(captions[i:i + half]), dim=-1), logit_scale.exp())
              for i in (0, half)]
    (sum(losses) / 2).backward()
    assert not torch.allclose(video_tower.weight.grad, gradients(clips, captions)[0], atol=1e-4)
