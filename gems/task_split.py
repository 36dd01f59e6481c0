"""Per-task gradients for a multi-task loop: from ONE backward pass when every row belongs to one task, else
from one backward pass per task.

GEMS needs, each step, the gradient of each task's token-mean loss (rec and search) besides the joint one.
When every row of a batch belongs to one task (the ``prompt`` format), rows never mix: a row's activations
and output gradients come from its own task's loss alone. A linear layer's weight gradient is a sum over rows,
∇W = Σᵢ δᵢ xᵢᵀ, so splitting the rows by task gives both task gradients from the single backward pass of
``loss_rec + loss_search`` at the FLOPs of the joint gradient (the per-sample-gradient trick: a forward hook
keeps each layer's input, a hook on its output receives δ). During such a forward the split layers' weights
do not require gradients, so autograd computes only the input gradients and the split products replace its
weight products instead of adding to them.

Which parameters are split by rows:

* ``nn.Linear`` weights and biases: Δ_tᵀ·X_t and Σ Δ_t over task t's rows;
* the input embedding (and modules sharing its weight): Δ_t's rows added at task t's token ids;
* normalisation layers (class name ending in ``Norm``) and peft's trainable-token wrappers: the layer's
  forward run again on task t's rows, differentiated with Δ_t (a cheap, row-local recomputation).

A row is the leading index of a layer's input: a batch row (``row_task``) for inputs of three or more
dimensions (token ids: two), a labelled position (``label_task``) for the 2-D input of the output head applied
to the labelled positions only. Any other trainable parameter — T5's relative attention bias (one table
serves every row), an adapter of unknown structure and every layer inside it (MoE-LoRA calls its router on a
table of task embeddings, not on rows) — keeps requiring gradients: the backward pass gives its joint
gradient, and one extra backward pass restricted to those parameters gives its rec gradient (the search one
is the difference). The split needs every split parameter to be used only through its module's forward call
(true for Hugging Face and peft models; a weight read directly, outside a module call, would be missed).

Without :meth:`TaskSplit.rows` around the forward pass, :meth:`TaskSplit.backward` takes one backward pass per
task through the shared graph (the ``timeline`` format, whose rows mix tasks), and
:meth:`TaskSplit.backward_task` takes the gradient of a pass that holds one task only. All three accumulate
over the passes of a step; :meth:`TaskSplit.give` ends the step: it leaves the joint gradient in ``p.grad``
and hands both task gradients to the optimizer.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, nn

TASK_NAMES = ("rec", "search")


class RowSplitError(RuntimeError):
    """A layer's input rows cannot be matched to tasks; the message names the layer and the fix."""


def _owned_params(module: nn.Module) -> list[nn.Parameter]:
    """Parameters a module's own forward uses: its direct ones and those of its ParameterDict/List children
    (peft keeps trainable-token deltas in a ParameterDict that is never called itself)."""
    owned = list(module.parameters(recurse=False))
    for child in module.children():
        if isinstance(child, (nn.ParameterDict, nn.ParameterList)):
            owned += list(child.parameters(recurse=False))
    return owned


def _kind(module: nn.Module, input_embedding_weights: set[int]) -> str | None:
    """How a module's parameters are split by rows, or None when they cannot be."""
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.Embedding):
        plain = not module.scale_grad_by_freq and not module.sparse
        return "embedding" if plain and id(module.weight) in input_embedding_weights else None
    name = type(module).__name__
    if name.endswith("Norm") or isinstance(module, nn.LayerNorm) or name == "TrainableTokensLayer":
        return "local"
    return None


class TaskSplit:
    """Per-task gradients of ``params`` (default: the model's trainable parameters) over one optimizer step.

    Losses handed to :meth:`backward` and :meth:`backward_task` are each task's contribution to that task's
    token-mean over the whole step (this pass's summed token losses divided by the step's token count of the
    task), so the accumulated gradients are the task gradients of the step."""

    def __init__(self, model: nn.Module, params: Iterable[nn.Parameter] | None = None):
        self.model = model
        self.params = [p for p in (model.parameters() if params is None else params) if p.requires_grad]
        if not self.params:
            raise ValueError("TaskSplit needs at least one trainable parameter")
        self._index = {id(p): i for i, p in enumerate(self.params)}
        embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        base = embedding.get_base_layer() if embedding is not None and hasattr(embedding, "get_base_layer") \
            else embedding
        embedding_weights = {id(base.weight)} if isinstance(base, nn.Embedding) else set()
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        # the output head and what wraps or sits inside it: the only layers whose 2-D input is per label
        head_names = tuple(f"{n}." for n, m in model.named_modules() if head is not None and m is head)
        self._modules: list[tuple[str, nn.Module, str, list[int]]] = []
        self._heads: set[int] = set()
        unsplittable: set[int] = set()
        opaque: list[str] = []  # modules of unknown structure: nothing inside them is split either
        for name, module in model.named_modules():
            if isinstance(module, (nn.ParameterDict, nn.ParameterList)):
                continue  # never called: its parameters belong to the module that holds it
            owned = [self._index[id(p)] for p in _owned_params(module) if id(p) in self._index]
            if not owned:
                continue
            kind = _kind(module, embedding_weights)
            if kind is None or any(name.startswith(prefix) for prefix in opaque):
                # e.g. an adapter that calls its inner router on a table of task embeddings, not on rows
                unsplittable.update(owned)
                opaque.append(f"{name}.")
            else:
                self._modules.append((name, module, kind, owned))
                if f"{name}.".startswith(head_names) and head_names:
                    self._heads.add(id(module))
        split = {i for _, _, _, owned in self._modules for i in owned} - unsplittable
        self._modules = [m for m in self._modules if set(m[3]) <= split]
        split = {i for _, _, _, owned in self._modules for i in owned}
        # a parameter no module owns (used functionally) or one an unsplittable module also uses: joint pass
        self._fallback = [i for i in range(len(self.params)) if i not in split]
        self._split = sorted(split)
        self._armed: dict | None = None  # row maps while a rows() forward runs
        self._hooks = [entry[1].register_forward_hook(self._forward_hook(entry), with_kwargs=True)
                       for entry in self._modules]
        self._recomputing = False
        self._splitting = False  # True while the backward pass of a row-split forward runs
        self._row_forward = False  # a forward pass ran inside rows() and awaits its backward()
        self.reset()

    # --- state of one step -------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the accumulated gradients and losses (``give`` calls it)."""
        self.grads: list[list[Tensor | None]] = [[None] * len(self.params), [None] * len(self.params)]
        self.loss_values = [0.0, 0.0]
        self.backward_passes = 0

    def remove(self) -> None:
        """Remove the hooks from the model."""
        for h in self._hooks:
            h.remove()
        self._hooks = []

    @property
    def fallback_parameters(self) -> list[nn.Parameter]:
        """The parameters whose task gradients need the extra restricted backward pass of a row split."""
        return [self.params[i] for i in self._fallback]

    def _add(self, task: int, i: int, g: Tensor) -> None:
        acc = self.grads[task]
        if acc[i] is None:  # an expanded (stride-0) gradient is copied: it is written in place later
            acc[i] = g if g.is_contiguous() and g.dtype == self.params[i].dtype else \
                g.to(self.params[i].dtype).contiguous()
        else:
            acc[i].add_(g)

    # --- row split ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def rows(self, row_task: Tensor, label_task: Tensor | None = None) -> Iterator[None]:
        """Run the forward pass inside: its rows are split by task in the next :meth:`backward`.

        ``row_task`` [B]: 0 (rec) or 1 (search) per batch row; ``label_task`` [N]: the task of each labelled
        position, for an output head applied to the labelled positions only (2-D input of N rows)."""
        row_task = torch.as_tensor(row_task).reshape(-1)
        if row_task.numel() == 0 or bool(((row_task != 0) & (row_task != 1)).any()):
            raise RowSplitError(f"row_task must hold 0 (rec) or 1 (search) for every row, got "
                                f"{row_task.tolist()[:8]}: a row mixing tasks (task -1) cannot be split by "
                                "rows; call backward() without rows() for one backward pass per task")
        if self._armed is not None:
            raise RuntimeError("TaskSplit.rows() is already active; run one forward pass per rows() block")
        maps = {"row": row_task, "label": None if label_task is None else torch.as_tensor(label_task).reshape(-1)}
        self._armed = maps
        saved = [self.params[i].requires_grad for i in self._split]
        for i in self._split:
            self.params[i].requires_grad_(False)
        try:
            yield
            self._row_forward = True
        finally:
            for i, flag in zip(self._split, saved):
                self.params[i].requires_grad_(flag)
            self._armed = None

    def _forward_hook(self, entry):
        name, module, kind, owned = entry

        def hook(mod, args, kwargs, output):
            if self._armed is None or self._recomputing:
                return None
            if not isinstance(output, Tensor):
                raise RowSplitError(f"layer {name!r} ({type(mod).__name__}) returns {type(output).__name__}, "
                                    "not a tensor: its parameters cannot be split by rows")
            x = args[0] if args else next(iter(kwargs.values()))
            rows = self._row_map(name, x, id(mod) in self._heads)
            if not output.requires_grad:
                output = output.detach().requires_grad_()  # inputs and weights hold no graph: start one here
            record = [entry, x.detach(), args[1:], kwargs, rows]
            output.register_hook(lambda delta: self._split_rows(record, delta))
            return output
        return hook

    def _row_map(self, name: str, x: Tensor, is_head: bool) -> tuple[slice | Tensor | None, ...]:
        """Per task, its rows among the leading index of ``x`` (a slice when contiguous, an index tensor
        otherwise, None when the task has none)."""
        maps = self._armed
        integer = not x.is_floating_point()
        if (x.dim() >= 3 or (integer and x.dim() == 2)) and x.shape[0] == len(maps["row"]):
            key = "row"
        elif is_head and x.dim() == 2 and not integer and maps["label"] is not None \
                and x.shape[0] == len(maps["label"]):
            key = "label"
        else:
            raise RowSplitError(
                f"layer {name!r} got an input of shape {tuple(x.shape)}: neither the batch's {len(maps['row'])} "
                f"rows first nor one row per labelled position ({None if maps['label'] is None else len(maps['label'])}"
                "), so its rows cannot be matched to tasks; pass label_task to rows() or take one backward pass "
                "per task (backward() without rows())")
        cached = maps.setdefault(("selectors", key, x.device), None)
        if cached is None:  # once per forward pass and device: no host sync per layer
            task = maps[key].to(x.device)
            cached = []
            for t in (0, 1):
                idx = torch.nonzero(task == t).flatten()
                if len(idx) == 0:
                    cached.append(None)
                elif int(idx[-1] - idx[0]) + 1 == len(idx):
                    cached.append(slice(int(idx[0]), int(idx[-1]) + 1))
                else:
                    cached.append(idx)
            maps[("selectors", key, x.device)] = cached = tuple(cached)
        return cached

    def _split_rows(self, record: list, delta: Tensor) -> None:
        if not self._splitting or not record:
            return
        (name, module, kind, owned), x, args, kwargs, rows = record
        record.clear()  # the layer's input is not needed again: free it as soon as it is used
        for t, sel in enumerate(rows):
            if sel is None:
                continue
            d, xt = delta[sel], x[sel]
            if kind == "linear":
                d2 = d.reshape(-1, d.shape[-1])
                x2 = xt.reshape(-1, xt.shape[-1]).to(d2.dtype)
                for i in owned:
                    p = self.params[i]
                    acc = self.grads[t][i]
                    if p is module.weight and acc is not None and acc.dtype == d2.dtype:
                        acc.addmm_(d2.T, x2)  # into the accumulator: no out×in temporary per layer and pass
                    elif p is module.weight:
                        self._add(t, i, (d2.T @ x2).to(p.dtype))
                    elif p is module.bias:
                        self._add(t, i, d2.sum(0).to(p.dtype))
            elif kind == "embedding":
                (i,) = owned
                p = self.params[i]
                ids, rows = xt.reshape(-1), d.reshape(-1, d.shape[-1])
                if module.padding_idx is not None:  # as nn.Embedding: the padding row gets no gradient
                    keep = ids != module.padding_idx
                    ids, rows = ids[keep], rows[keep]
                acc = self.grads[t][i]
                if acc is not None and acc.dtype == rows.dtype:
                    acc.index_add_(0, ids, rows)  # into the accumulator: no vocabulary-sized temporary
                else:
                    g = torch.zeros(p.shape, dtype=d.dtype, device=d.device)
                    g.index_add_(0, ids, rows)
                    self._add(t, i, g.to(p.dtype))
            else:  # row-local recomputation
                self._local_vjp(module, owned, t, xt, args, kwargs, d)

    def _local_vjp(self, module, owned, t, xt, args, kwargs, d) -> None:
        params = [self.params[i] for i in owned]
        saved = [p.requires_grad for p in params]
        self._recomputing = True
        try:
            with torch.enable_grad():
                for p in params:
                    p.requires_grad_(True)
                y = module(xt, *args, **kwargs)
                grads = torch.autograd.grad(y, params, d.to(y.dtype), allow_unused=True)
        finally:
            for p, flag in zip(params, saved):
                p.requires_grad_(flag)
            self._recomputing = False
        for i, g in zip(owned, grads):
            if g is not None:
                self._add(t, i, g)

    # --- backward passes ---------------------------------------------------------------------------
    def backward(self, loss_rec: Tensor, loss_search: Tensor) -> None:
        """Accumulate both task gradients of one forward pass.

        After a forward pass inside :meth:`rows`: ONE backward pass of ``loss_rec + loss_search``, split by rows
        (plus, when some parameters cannot be split, one pass restricted to them). Otherwise one backward pass
        per task through the shared graph."""
        self.loss_values[0] += float(loss_rec.detach())
        self.loss_values[1] += float(loss_search.detach())
        split_forward, self._row_forward = self._row_forward, False
        live = [(t, loss) for t, loss in ((0, loss_rec), (1, loss_search)) if loss.requires_grad]
        if not live:
            return
        if not split_forward:
            for t, loss in live:
                self._grad_into(t, loss, retain=loss is not live[-1][1])
            return
        fallback = [self.params[i] for i in self._fallback]
        kept = [p.grad for p in fallback]
        for p in fallback:
            p.grad = None
        self._splitting = True
        try:
            torch.autograd.backward(sum(loss for _, loss in live), retain_graph=bool(fallback))
        finally:
            self._splitting = False
        self.backward_passes += 1
        if not fallback:
            return
        joint = [p.grad for p in fallback]
        for p, g in zip(fallback, kept):
            p.grad = g
        rec = torch.autograd.grad(loss_rec, fallback, allow_unused=True) if loss_rec.requires_grad else \
            (None,) * len(fallback)
        self.backward_passes += 1
        for i, j, r in zip(self._fallback, joint, rec):
            if r is not None:
                self._add(0, i, r)
            if j is not None:
                self._add(1, i, j if r is None else j - r)

    def backward_task(self, task: int | str, loss: Tensor, retain_graph: bool = False) -> None:
        """Accumulate the gradient of a pass that holds one task only (``task`` 0/"rec" or 1/"search")."""
        t = TASK_NAMES.index(task) if isinstance(task, str) else int(task)
        self.loss_values[t] += float(loss.detach())
        if loss.requires_grad:
            self._grad_into(t, loss, retain=retain_graph)

    def _grad_into(self, t: int, loss: Tensor, retain: bool) -> None:
        """One backward pass of ``loss`` into task ``t``'s accumulators. Each accumulator stands in ``p.grad``
        during the pass, so autograd adds every weight's gradient into it as soon as it is computed (in place,
        as for any accumulated ``p.grad``) instead of returning a second full set of gradients at the end."""
        acc = self.grads[t]
        kept = [p.grad for p in self.params]
        for p, a in zip(self.params, acc):
            p.grad = a
        try:
            torch.autograd.backward(loss, retain_graph=retain, inputs=self.params)
        finally:
            for i, (p, g) in enumerate(zip(self.params, kept)):
                acc[i], p.grad = p.grad, g
        self.backward_passes += 1

    # --- end of step -------------------------------------------------------------------------------
    def finish(self, n_rec: int, n_search: int, without_joint: Iterable[nn.Parameter] = ()
               ) -> tuple[list[Tensor | None], list[Tensor | None]]:
        """End the step: ``p.grad`` = the joint gradient (n_rec·g_rec + n_search·g_search)/(n_rec + n_search),
        a tensor of its own, except for the parameters in ``without_joint`` (left None: an optimizer that
        derives their joint gradient one weight at a time, as ``MultiSubspaceAdamW.set_task_gradients(...,
        derive_joint=True)`` does, then needs no full-size joint gradient beside the task gradients). Returns
        (rec, search) per parameter (None for a task with count 0; a zero tensor where the task's loss does not
        reach a parameter). Resets the accumulators."""
        if n_rec < 0 or n_search < 0 or n_rec + n_search == 0:
            raise ValueError(f"task counts must be >= 0 with a positive sum, got n_rec={n_rec}, n_search={n_search}")
        skip = {id(p) for p in without_joint}
        acc = [[torch.zeros_like(p) if a is None else a for p, a in zip(self.params, task)] for task in self.grads]
        w = n_search / (n_rec + n_search)
        for p, gr, gs in zip(self.params, acc[0], acc[1]):
            p.grad = None if id(p) in skip else torch.lerp(gr, gs, w)
        self.reset()
        none = [None] * len(self.params)
        return (acc[0] if n_rec else none), (acc[1] if n_search else none)

    def give(self, optimizer, n_rec: int, n_search: int) -> tuple[list[Tensor | None], list[Tensor | None]]:
        """:meth:`finish`, then hand the task gradients and losses to ``optimizer.set_task_gradients`` (when it
        has one, as :class:`~gems.MultiSubspaceAdamW` does). Returns what :meth:`finish` returns."""
        losses = list(self.loss_values)
        rec, search = self.finish(n_rec, n_search)
        if hasattr(optimizer, "set_task_gradients"):
            optimizer.set_task_gradients(dict(zip(self.params, rec)), dict(zip(self.params, search)),
                                         n_rec, n_search, losses[0], losses[1])
        return rec, search
