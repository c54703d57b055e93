"""Layer-by-layer calibration of one block (``PruneConfig(within_block="sequential")``): each layer's
statistics come from inputs that went through the block's already-pruned layers, and the block runs
once over the calibration items instead of twice (a dense statistics pass, then an output pass).

The block's forward runs for every item in its own thread, one thread at a time (a baton: each
runs with all of torch's threads, and the statistics are fed in item order). A forward pre-hook
on the first layer of each group (layers reading one input tensor: q/k/v, gate/up) feeds the
group's statistics and parks the item there. Once every item has parked, the caller receives the
group as a :class:`CalibrationStep` and prunes it; the items then run the pruned group and go on
to the next group's input. After the last group the items run to the end of the block, and their
outputs become the next block's inputs.

The groups and their order come from one dense forward of the first item (a probe), made once per
kind of block: blocks whose layers have the same names, types and widths reuse it. A block whose
layers do not each run exactly once on the probe falls back to the two passes. A later block that
departs from the probed order (another layer first, a layer twice, another input for a group
member) is an error naming the layer: by then part of the block is pruned.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

import torch
import torch.nn as nn

from .pipeline import tensor_version
from .timing import StageTimer, stage

logger = logging.getLogger(__name__)


MAX_THREADS = 4096
"""Item threads times torch's intra-op threads above which the walk refuses to start: each item
thread that runs torch ops keeps its own pool of OpenMP workers."""


class _Abort(BaseException):
    """Ends an item's forward when the walk stops early (an error, the last block's last group)."""


def _thread_state():
    """The caller's thread-local torch state that an item thread must run under: inference mode
    (else grad mode off), autocast per device type, the current CUDA device."""
    cache = torch.is_autocast_cache_enabled()
    autocast = [(device, torch.get_autocast_dtype(device), cache) for device in ("cpu", "cuda")
                if torch.is_autocast_enabled(device)]
    cuda_device = torch.cuda.current_device() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return torch.is_inference_mode_enabled(), autocast, cuda_device


@contextlib.contextmanager
def _entered(state):
    inference, autocast, cuda_device = state
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.inference_mode() if inference else torch.no_grad())
        for device, dtype, cache in autocast:
            stack.enter_context(torch.autocast(device, dtype=dtype, cache_enabled=cache))
        if cuda_device is not None:
            stack.enter_context(torch.cuda.device(cuda_device))
        yield


def layer_groups(block: nn.Module, layers: dict, item, share: bool) -> list[list[str]] | None:
    """The block's layers in the order of a dense forward of ``item`` (a :class:`BlockInput`), in
    groups of consecutive layers that read one input tensor (with ``share``; Linear or Conv1D of
    one width), or None when some layer does not run exactly once."""
    seen: list[tuple[str, torch.Tensor, int | None]] = []
    handles = [layer.module.register_forward_pre_hook(
        lambda module, args, name=name: seen.append((name, args[0], tensor_version(args[0]))))
        for name, layer in layers.items()]
    try:
        with torch.no_grad():
            block(item.hidden, *item.args, **item.kwargs)
    finally:
        for handle in handles:
            handle.remove()
    if sorted(name for name, _, _ in seen) != sorted(layers):
        return None
    groups: list[list[str]] = []
    leader_input = None
    for name, x, version in seen:
        leader = layers[groups[-1][0]] if groups else None
        if share and leader is not None and leader_input == (id(x), version) and version is not None and \
                leader.reads_rows_like(layers[name]):
            groups[-1].append(name)
            continue
        groups.append([name])
        leader_input = (id(x), version)
    return groups


def plan_signature(prefix: str, block: nn.Module, layers: dict) -> tuple:
    """What makes two blocks run their layers alike: the block's type and its layers' relative
    names, types and widths."""
    return (type(block).__name__,) + tuple(
        (name[len(prefix):], type(layer.module).__name__, layer.kind, layer.in_features)
        for name, layer in layers.items())


class LayerByLayerPass:
    """One pass of a block over the calibration items, paused at each group's input (see the
    module docstring). ``run_items()`` lets every item run to its next stop; the main thread
    calls it once per group, then once more to finish; ``close()`` ends any item still running."""

    def __init__(self, name: str, block: nn.Module, layers: dict, groups: list[list[str]], inputs: list,
                 make_stats, effective_token_mask, timer: StageTimer | None, finish: bool,
                 item_numbers: list[int] | None = None):
        self.name, self.block, self.layers, self.groups, self.inputs = name, block, layers, groups, inputs
        self.timer = timer
        # item positions in the caller's calibration list (this process's share of it), for messages
        self.item_numbers = list(item_numbers) if item_numbers is not None else list(range(len(inputs)))
        threads = len(inputs) * max(torch.get_num_threads(), 1)
        if threads > MAX_THREADS:
            raise ValueError(f"PruneConfig.within_block='sequential' runs one thread per calibration item, each with "
                             f"its own torch thread pool: {len(inputs)} items x {torch.get_num_threads()} threads = "
                             f"{threads}, more than {MAX_THREADS}; pass fewer, larger calibration batches or use "
                             "within_block='parallel'")
        self.finish = finish  # run the items to the block's end (False: the last block; stop after its last group)
        self.position = {member: (index, member == group[0]) for index, group in enumerate(groups)
                         for member in group}
        self.stats = {}
        for group in groups:
            shared = make_stats(layers[group[0]])
            shared.readers = len(group)
            for member in group:
                self.stats[member] = shared
        self.token_masks = [effective_token_mask(item.token_mask) for item in inputs]
        self.next_group = [0] * len(inputs)
        self.leader_inputs: list = [None] * len(inputs)  # (tensor, version) each item's current group read
        self.ran: list[set] = [set() for _ in inputs]
        self.outputs: list = [None] * len(inputs)
        self.errors: list = [None] * len(inputs)
        self.done = [False] * len(inputs)
        self.turn: int | None = None
        self.aborted = False
        self.condition = threading.Condition()
        self._local = threading.local()
        self._state = _thread_state()
        self.handles: list = []
        self.threads: list = []
        try:
            for layer_name in self.position:
                self.handles.append(layers[layer_name].module.register_forward_pre_hook(
                    lambda module, args, layer_name=layer_name: self._pre_hook(layer_name, args)))
            for index in range(len(inputs)):
                thread = threading.Thread(target=self._run, args=(index,), name=f"prunekit {name} item {index}",
                                          daemon=True)
                thread.start()
                self.threads.append(thread)
        except BaseException:
            self.close()
            raise

    # --------------------------------------------------------------------------- item threads

    def _wait_for_turn(self, index: int) -> None:
        with self.condition:
            self.condition.wait_for(lambda: self.turn == index or self.aborted)
            if self.aborted:
                raise _Abort

    def _hand_back(self) -> None:
        with self.condition:
            self.turn = None
            self.condition.notify_all()

    def _run(self, index: int) -> None:
        self._local.index = index
        try:
            self._wait_for_turn(index)
            item = self.inputs[index]
            with _entered(self._state):
                output = self.block(item.hidden, *item.args, **item.kwargs)
            from .pipeline import block_output
            self.outputs[index] = block_output(output).detach()
        except _Abort:
            pass
        except BaseException as error:  # re-raised by the main thread
            self.errors[index] = error
        finally:
            self.done[index] = True
            self._hand_back()

    def _departed(self, index: int, what: str) -> None:
        from .pipeline import CalibrationError

        raise CalibrationError(
            f"calibration of {self.name} layer by layer (PruneConfig.within_block='sequential'): on calibration item "
            f"{self.item_numbers[index]} {what}, unlike the forward its layer order was taken from; prune with "
            "within_block='parallel'")

    def _pre_hook(self, name: str, args) -> None:
        index = getattr(self._local, "index", None)
        if index is None:  # a forward of this block outside the pass (not ours to stop)
            return
        if name in self.ran[index]:
            self._departed(index, f"layer {name} ran twice")
        self.ran[index].add(name)
        group, leads = self.position[name]
        x = args[0]
        if not leads:
            leader_input = self.leader_inputs[index]
            if group != self.next_group[index] - 1 or leader_input is None or leader_input[0] is not x or \
                    leader_input[1] != tensor_version(x):
                self._departed(index, f"layer {name} did not read the input of {self.groups[group][0]} right after it")
            return
        if group != self.next_group[index]:
            self._departed(index, f"layer {name} ran before {self.groups[self.next_group[index]][0]}"
                           if group > self.next_group[index] else f"layer {name} ran again")
        with stage(self.timer, "statistics"):
            self.stats[name].add(x, self.token_masks[index])
        self.leader_inputs[index] = (x, tensor_version(x))
        self.next_group[index] = group + 1
        self._hand_back()
        self._wait_for_turn(index)  # until the group is pruned

    # --------------------------------------------------------------------------- main thread

    def run_items(self) -> None:
        """Lets each unfinished item run, one after the other, to its next stop; re-raises the
        first error an item met."""
        for index in range(len(self.inputs)):
            if self.done[index]:
                continue
            with self.condition:
                self.turn = index
                self.condition.notify_all()
                self.condition.wait_for(lambda: self.turn is None)
            if self.errors[index] is not None:
                raise self.errors[index]

    def check_reached(self, group: int) -> None:
        """Every item stopped at ``group``'s input."""
        for index, reached in enumerate(self.next_group):
            if reached != group + 1:
                self._departed(index, f"the forward ended before layer {self.groups[group][0]}")

    def steps(self, strategy) -> Iterator[tuple[list[str], dict]]:
        """(group, its statistics by layer) per group, all items stopped at its input; then the
        items run to the end (``finish``) and :attr:`outputs` holds the block's outputs."""
        for group_index, group in enumerate(self.groups):
            with strategy.guard(f"the layer-by-layer pass of {self.name} up to {group[0]}"), \
                    stage(self.timer, "calibration_forwards"):
                self.run_items()
                self.check_reached(group_index)
            with stage(self.timer, "statistics"):
                strategy.reduce_statistics([self.stats[group[0]]])
            yield group, {member: self.stats[member] for member in group}
            for member in group:
                self.stats.pop(member)  # the Hessians are not needed past pruning
        if self.finish:
            with strategy.guard(f"the layer-by-layer pass of {self.name} to its end"), \
                    stage(self.timer, "calibration_forwards"):
                self.run_items()

    def close(self) -> None:
        """Ends the items' threads (those still running stop at their next layer) and removes
        the hooks."""
        try:
            with self.condition:
                self.aborted = True
                self.condition.notify_all()
            for thread in self.threads:
                thread.join()
        finally:
            for handle in self.handles:
                handle.remove()
            self.leader_inputs = [None] * len(self.inputs)
