"""Measurements the tests take from torch alone (no archcalc arithmetic): the oracles for saved and peak bytes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class _Packed:
    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor


def saved_bytes(model: torch.nn.Module, *inputs: torch.Tensor, train: bool = True) -> int:
    """Bytes of the tensors autograd holds for backward at the end of one forward, de-duplicated by storage,
    parameters and buffers excluded (training mode unless `train` is False). Each packed tensor is wrapped in an
    object its autograd node holds: what a node dropped mid-forward kept (an op whose output nothing reads) dies
    with it and is not counted."""
    import weakref

    exclude = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    packed: list[weakref.ref[_Packed]] = []

    def pack(t: torch.Tensor) -> _Packed:
        holder = _Packed(t.detach())  # detached: a saved output would hold its own node in a cycle, never freed
        packed.append(weakref.ref(holder))
        return holder

    model.train(train)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda holder: holder.tensor):
            out = model(*inputs)
    finally:
        model.eval()
    storages: dict[int, int] = {}
    for ref in packed:
        holder = ref()
        if holder is not None:
            storage = holder.tensor.untyped_storage()
            if storage.data_ptr() not in exclude and storage.nbytes():
                storages[storage.data_ptr()] = storage.nbytes()
    del out
    return sum(storages.values())


def fvcore_total(model: torch.nn.Module, x: torch.Tensor) -> int:
    import logging

    from fvcore.nn import FlopCountAnalysis

    logging.getLogger("fvcore").setLevel(logging.ERROR)
    model.eval()
    analysis = FlopCountAnalysis(model, x)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    return int(analysis.total())


def peak_bytes(fn: Callable[[], Any]) -> int:
    """The CPU inference peak beyond what exists before `fn` runs, from torch.profiler's memory events (after one
    warm-up call, so one-off allocations such as weight packing are out of the way), on one thread."""
    from archcalc.torch.profile.probes import cpu_peak_bytes  # replays the profiler's events; no archcalc model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            fn()
            return cpu_peak_bytes(fn)
    finally:
        torch.set_num_threads(threads)


def dispatch_peak_bytes(fn: Callable[[], Any], seen: set[int] | None = None) -> int:
    """The most bytes of tensors that ops create while `fn` runs and that are alive at once, beyond what existed
    before: every op's output storage is recorded as it is made (a TorchDispatchMode) and released when the last
    tensor using it is freed (a weakref finalizer). Independent of torch.profiler and of archcalc: it sees what the
    ops return, not the workspace inside a kernel. Views and in-place results share their input's storage."""
    import weakref

    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    state = {"live": 0, "peak": 0}
    users: dict[int, list[int]] = {}  # storage address -> [bytes, tensors using it]

    def release(address: int) -> None:
        entry = users[address]
        entry[1] -= 1
        if entry[1] == 0:
            state["live"] -= entry[0]
            del users[address]

    class Allocations(TorchDispatchMode):
        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            out = func(*args, **(kwargs or {}))
            given = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs))
                     if isinstance(t, torch.Tensor)}
            for t in tree_leaves(out):
                if not isinstance(t, torch.Tensor) or t.device.type != "cpu":
                    continue
                storage = t.untyped_storage()
                address = storage.data_ptr()
                if address == 0 or storage.nbytes() == 0 or (address in given and address not in users):
                    continue  # no storage, or a view / in-place result of a tensor made before `fn`
                if address in users:
                    users[address][1] += 1
                else:
                    users[address] = [storage.nbytes(), 1]
                    if seen is not None:
                        seen.add(address)
                    state["live"] += storage.nbytes()
                    state["peak"] = max(state["peak"], state["live"])
                weakref.finalize(t, release, address)
            return out

    with Allocations():
        result = fn()
    del result
    return state["peak"]


def step_peak_bytes(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], optimizer: Any, steps: int = 1,
                    autocast: torch.dtype | None = None) -> tuple[int, int]:
    """(bytes alive before the step, the most alive at once during it) for one training step after `steps - 1`
    unmeasured ones: zero_grad(set_to_none=True), a training-mode forward, the sum of the outputs' sums as the
    loss, backward, optimizer.step(). Before the step: parameters, buffers, the inputs and the optimizer's state
    tensors (its `step` counters included); during it: what ops create, by storage (dispatch_peak_bytes' rule),
    forward and backward, then the optimizer's step beside the gradients. State the optimizer makes without an
    op (Adam's torch.tensor(0.0) `step` counters, made first) is added to the optimizer's part."""

    def storages(tensors: Any) -> dict[int, int]:
        return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}

    def state() -> dict[int, int]:
        return storages(t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t))

    def forward_backward() -> None:
        with torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):
            out = model(*inputs)
            outs = list(out.values()) if isinstance(out, dict) else [out]
            loss = outs[0].sum()
            for o in outs[1:]:
                loss = loss + o.sum()
        del out, outs
        loss.backward()

    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(steps - 1):
            optimizer.zero_grad(set_to_none=True)
            forward_backward()
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        had = state()
        before = sum({**storages([*model.parameters(), *model.buffers(), *inputs]), **had}.values())
        backward = dispatch_peak_bytes(forward_backward)
        grads = sum(storages(p.grad for p in model.parameters() if p.grad is not None).values())
        seen: set[int] = set()
        step = dispatch_peak_bytes(optimizer.step, seen)
        unseen = sum(n for address, n in state().items() if address not in had and address not in seen)
        return before, before + max(backward, grads + unseen + step)
    finally:
        torch.set_num_threads(threads)
        model.eval()


def cuda_step_peak_bytes(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], optimizer: Any,
                         steps: int = 1) -> tuple[int, int]:
    """step_peak_bytes on CUDA from the caching allocator's statistics: (torch.cuda.memory_allocated before the
    step, torch.cuda.max_memory_allocated during it), synchronized around the step. The allocator rounds every
    block up to 512 bytes and cuDNN/cuBLAS workspace is allocated through it, so the figure includes both."""

    def one() -> None:
        optimizer.zero_grad(set_to_none=True)
        out = model(*inputs)
        outs = list(out.values()) if isinstance(out, dict) else [out]
        loss = outs[0].sum()
        for o in outs[1:]:
            loss = loss + o.sum()
        del out, outs
        loss.backward()
        del loss
        optimizer.step()

    model.train()
    try:
        for _ in range(steps - 1):
            one()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        one()
        torch.cuda.synchronize()
        return before, torch.cuda.max_memory_allocated()
    finally:
        model.eval()


def saved_bytes_by_module(model: torch.nn.Module, *inputs: torch.Tensor,
                          modules: dict[str, torch.nn.Module] | None = None) -> dict[str, int]:
    """Per leaf module (its name in model.named_modules(); "" for what is packed outside every leaf module: a
    merge in the container's forward): the bytes autograd packs while that module's forward runs (a
    training-mode forward; saved_tensors_hooks), by storage: a storage packed under several modules counts at the
    first, parameters and buffers excluded. As in saved_bytes, what a node dropped mid-forward kept is not
    counted. Modules that keep nothing are absent. `modules`: the modules to attribute to, by name, instead of
    the leaf modules (a module and what runs inside it)."""
    import weakref

    exclude = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    current: list[str] = []
    packed: list[tuple[str, weakref.ref[_Packed]]] = []

    def pack(t: torch.Tensor) -> _Packed:
        holder = _Packed(t.detach())
        packed.append((current[-1] if current else "", weakref.ref(holder)))
        return holder

    leaves = list(modules.items()) if modules is not None else \
        [(name, m) for name, m in model.named_modules() if not list(m.children())]
    hooks = []
    for name, m in leaves:
        hooks.append(m.register_forward_pre_hook(lambda _m, _a, name=name: current.append(name)))
        hooks.append(m.register_forward_hook(lambda _m, _a, _o: current.pop() and None))
    model.train()
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda holder: holder.tensor):
            out = model(*inputs)
    finally:
        for hook in hooks:
            hook.remove()
        model.eval()
    first: dict[int, tuple[str, int]] = {}
    for name, ref in packed:
        holder = ref()
        if holder is None:
            continue
        storage = holder.tensor.untyped_storage()
        address = storage.data_ptr()
        if address not in exclude and storage.nbytes() and address not in first:
            first[address] = (name, storage.nbytes())
    del out
    by: dict[str, int] = {}
    for name, size in first.values():
        by[name] = by.get(name, 0) + size
    return by


def backward_flops_by_module(model: torch.nn.Module, x: torch.Tensor) -> dict[str, tuple[int, int]]:
    """Per leaf module with parameters: (input-gradient FLOPs, weight-gradient FLOPs) that FlopCounterMode counts
    in a real backward of the sum of a training-mode forward (the step's FLOPs less the forward's, per module,
    as FlopCounterMode attributes them). The module's backward FLOPs with its parameters
    frozen are its input gradient's; with them trainable, both: the weight gradient's is the difference. The
    input batch needs no gradient, as in training."""
    from torch.utils.flop_counter import FlopCounterMode

    trainable = {p: p.requires_grad for p in model.parameters()}

    def backward(frozen: str | None) -> dict[str, int]:
        for name, m in model.named_modules():
            for p in m.parameters(recurse=False):
                p.requires_grad_(trainable[p] and name != frozen)
        model.train()
        with FlopCounterMode(display=False) as counter:
            model(x).sum().backward()
        model.zero_grad(set_to_none=True)
        return {k: sum(v.values()) - forward.get(k, 0) for k, v in counter.get_flop_counts().items()}

    model.train()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    forward = {k: sum(v.values()) for k, v in counter.get_flop_counts().items()}

    prefix = type(model).__name__
    both = backward(None)
    result = {}
    for name, m in model.named_modules():
        if list(m.children()) or not list(m.parameters(recurse=False)):
            continue
        key = f"{prefix}.{name}"
        grad_input = backward(name).get(key, 0)
        result[name] = (grad_input, both.get(key, 0) - grad_input)
    for p, flag in trainable.items():
        p.requires_grad_(flag)
    return result
