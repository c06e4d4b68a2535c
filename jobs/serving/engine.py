"""Continuous batching: many requests share one model, one forward pass per step for every active sequence.

The idea of vLLM's scheduler, written plainly. One thread owns the model and loops:

    1. admit waiting requests, as many prompts as the prefill budget allows: run them through the model together
       (prefill: one right-padded forward, filling a cache of their own) and sample each one's first token; the
       sequences then join the running batch (BatchedKVCache.add). A prompt longer than the budget is prefilled
       alone, a budget's worth of tokens per step (chunked prefill, as vLLM does), so that no step stalls the
       running streams for much longer than the budget's forward;
    2. decode: one forward pass of (B, 1) tokens, the last token of each active sequence, over the batch's
       cache; each sequence samples its next token with its own settings and random generator;
    3. finished or abandoned sequences leave the batch at once (BatchedKVCache.remove), freeing their row.

A request that arrives while others are generating joins at the next step instead of waiting for them to end.
Each sequence sees only its own keys (the batch cache masks the others and the padding), so at temperature 0 a
request gets the tokens it would get alone. A sequence stops at one of its stop tokens, after max_tokens, or
when the model's context is full (finish reason "length").

Tokens go back to the caller through `Request.emit`, called from the engine's thread (the server turns it into
an asyncio queue), each with its log-probability when the request asks (`logprobs`): the model's log-softmax at
that position, before temperature, top-k or top-p (what the model thinks, not how it was sampled), and the N
likeliest tokens there. Nothing here knows about HTTP or text.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch

from model_zoo.generation import model_device, sample_rows
from model_zoo.kv_cache import BatchedKVCache

log = logging.getLogger(__name__)


@dataclass
class Request:
    prompt_ids: list[int]
    max_tokens: int
    emit: Callable[[tuple], None]  # ("token", id, TokenLogprob | None), then ("done", "stop" | "length") or
    #                                ("error", message)
    temperature: float = 1.0
    top_p: float | None = None
    seed: int | None = None
    stop_ids: frozenset[int] = frozenset()
    top_k: int | None = None  # None or 0: every token (the OpenAI API has no top_k; vLLM's extension does)
    logprobs: int | None = None  # None: none; N: each token's log-probability and the N likeliest tokens there
    cancelled: threading.Event = field(default_factory=threading.Event)  # set by the caller: leave the batch

    def cancel(self) -> None:
        self.cancelled.set()


@dataclass
class TokenLogprob:
    """A sampled token's log-probability under the model, and the likeliest tokens at its position (id, logprob)."""

    logprob: float
    top: list[tuple[int, float]]


@dataclass
class _Sequence:
    """A request being generated: its random generator, its last token and how many it has made."""

    request: Request
    generator: torch.Generator
    last_token: int = -1
    generated: int = 0


def check_group(requests, max_seq_len: int, max_batch: int) -> None:
    """What an engine takes: 1 to max_batch choices of one prompt of 1 to max_seq_len tokens (a ValueError if not)."""
    prompt = requests[0].prompt_ids
    if not prompt or len(prompt) > max_seq_len:
        raise ValueError(f"a prompt holds 1 to {max_seq_len} tokens, got {len(prompt)}")
    if any(r.prompt_ids != prompt for r in requests) or len(requests) > max_batch:
        raise ValueError(f"choices share one prompt and fit in the batch ({max_batch}), got {len(requests)}")


@dataclass
class _ChunkedPrefill:
    """A prompt longer than the prefill budget, prefilled a chunk per step into a cache of its own."""

    prompt: list[int]
    sequences: list[_Sequence]  # its choices
    cache: BatchedKVCache
    done: int = 0  # prompt tokens already in the cache


class Engine:
    def __init__(self, model, max_batch: int = 16, threads: int | None = 1, prefill_budget: int = 128,
                 after_step: Callable[[], None] | None = None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        # Tokens (padded) that one step may prefill before the running sequences get their next token: a burst of
        # long prompts is taken a few at a time, so it delays the running streams by a bounded amount.
        self.prefill_budget = prefill_budget
        # CPU threads for the engine's own ops. One by default: a decode step is many small ops, where a second
        # thread costs more in synchronisation than it gives (measured: 2.3x the tokens/s at 1 thread than at 2
        # on 2 cores for the CPU demo model), and it leaves a core to the HTTP side. None: torch's default.
        self.threads = threads
        self.after_step = after_step  # called on the engine's thread after each step, once its events are emitted
        self.model = model.eval() if hasattr(model, "eval") else model
        self.max_batch = max_batch  # 1: one request at a time, the others wait (the benchmark's baseline)
        self.device = model_device(model)
        self.max_seq_len = model.config.max_seq_len
        self._waiting: deque[list[Request]] = deque()  # groups: the choices of one prompt (n), admitted together
        self._active: list[_Sequence] = []  # row i of self._cache is self._active[i]
        self._cache = self._new_cache()
        self._wake = threading.Condition()
        self._closing = False
        self._end_reason: str | None = None  # set by end_all: the loop ends every request with this reason
        self._admitting = 0  # requests taken from the queue and being prefilled (not yet in self._active)
        self._chunked: _ChunkedPrefill | None = None  # a long prompt being prefilled a chunk per step
        self._thread = threading.Thread(target=self._loop, name="engine", daemon=True)
        self._thread.start()

    def submit(self, *requests: Request) -> None:
        """Queue one request, or several choices of one prompt (the API's n): they share its prefill, then decode
        as rows of the batch, each with its own settings and generator."""
        check_group(requests, self.max_seq_len, self.max_batch)
        with self._wake:
            self._waiting.append(list(requests))
            self._wake.notify()

    def end_all(self, reason: str = "abort") -> None:
        """End every running and waiting request at the next step with ("done", reason): what a shutdown does once
        its grace period is over, so that each stream still gets its final chunk."""
        with self._wake:
            self._end_reason = reason
            self._wake.notify()

    def close(self) -> None:
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join(timeout=10)

    @property
    def active(self) -> int:
        """Sequences in the running batch."""
        return len(self._active)

    @property
    def unfinished(self) -> int:
        """Requests not yet answered: waiting, being prefilled, or in the running batch."""
        with self._wake:
            return len(self._active) + self._admitting + self.waiting

    @property
    def waiting(self) -> int:
        """Requests not yet admitted (the batch is full)."""
        return sum(len(group) for group in self._waiting)

    # --- the loop, on the engine's thread ----------------------------------------------------------------------

    def _loop(self) -> None:
        if self.threads is not None and self.device.type == "cpu":
            torch.set_num_threads(self.threads)
        while True:
            with self._wake:
                while not self._closing and not self._waiting and not self._active and self._end_reason is None:
                    self._wake.wait()
                if self._closing:
                    break
                ended, reason = [], self._end_reason
                if reason is not None:
                    ended = self._every_request()
                    self._active, self._cache, self._end_reason = [], self._new_cache(), None
                    self._chunked = None
                    self._waiting.clear()
                admitted, places, longest = [], self.max_batch - len(self._active), 0
                while self._chunked is None and self._waiting and len(self._waiting[0]) <= places:
                    length = max(longest, len(self._waiting[0][0].prompt_ids))
                    if admitted and (len(admitted) + 1) * length > self.prefill_budget:
                        break  # the rest waits for the next step (the first prompt is always taken)
                    places -= len(self._waiting[0])
                    admitted.append(self._waiting.popleft())
                    longest = length
                self._admitting = sum(len(group) for group in admitted) + (len(self._chunked.sequences)
                                                                           if self._chunked else 0)
            for request in ended:
                request.emit(("done", reason))
            with torch.inference_mode():
                try:
                    if admitted:
                        self._prefill(admitted)
                    elif self._chunked is not None:
                        self._prefill_chunk()
                except Exception as error:  # what the prefill's forward raises ends these prompts' requests alone
                    failed = [r for group in admitted for r in group] or (
                        [s.request for s in self._chunked.sequences] if self._chunked else [])
                    self._chunked = None
                    self._fail(failed, error, "prefill failed")
                with self._wake:
                    self._admitting = len(self._chunked.sequences) if self._chunked else 0
                try:
                    self._leave({i for i, s in enumerate(self._active) if s.request.cancelled.is_set()})
                    if self._active:
                        self._decode_step()
                except Exception as error:  # a bug in the batch's forward pass: the requests in the batch hear of
                    self._fail([s.request for s in self._active], error, "engine step failed")  # it, and the
                    self._active, self._cache = [], self._new_cache()  # engine serves the next ones
            if self.after_step is not None:
                self.after_step()
        with self._wake:
            left = self._every_request()
        for request in left:
            request.emit(("error", "the server is shutting down"))
        if self.after_step is not None:
            self.after_step()

    def _every_request(self) -> list[Request]:
        """The requests running, being prefilled in chunks, and waiting (under self._wake)."""
        chunked = [s.request for s in self._chunked.sequences] if self._chunked else []
        return [s.request for s in self._active] + chunked + [r for group in self._waiting for r in group]

    def _new_cache(self) -> BatchedKVCache:
        return BatchedKVCache(self.model.config.n_blocks, self.max_seq_len, self.max_batch)

    def _prefill(self, groups: list[list[Request]]) -> None:
        """The admitted prompts together: one forward of (prompts, longest) tokens, right-padded, into a cache of their
        own. Each prompt's choices sample their first token from its last position's logits, each with its own
        generator, then join the batch as rows holding a copy of the prompt's keys and values."""
        live = []  # (prompt, its choices not cancelled while they waited)
        for group in groups:
            try:  # what one prompt's settings raise (a seed torch cannot take) ends that prompt's requests alone
                sequences = [_Sequence(request, self._generator(request.seed)) for request in group
                             if not request.cancelled.is_set()]
            except Exception as error:
                self._fail(group, error, "prefill failed")
                continue
            if sequences:
                live.append((group[0].prompt_ids, sequences))
        if not live:
            return
        if len(live) == 1 and len(live[0][0]) > self.prefill_budget:  # too long for one step: a chunk per step
            prompt, sequences = live[0]
            self._chunked = _ChunkedPrefill(prompt, sequences, BatchedKVCache.for_prompts(self.model.config.n_blocks,
                                                                                          [len(prompt)]))
            self._prefill_chunk()
            return
        lengths = [len(prompt) for prompt, _ in live]
        longest = max(lengths)
        cache = BatchedKVCache.for_prompts(self.model.config.n_blocks, lengths)
        tokens = torch.tensor([prompt + [0] * (longest - len(prompt)) for prompt, _ in live], device=self.device)
        logits, _ = self.model(tokens, kv_cache=cache)  # (G, longest, V); a row's pad positions are never read
        cache.trim(lengths)
        for row, ((prompt, sequences), length) in enumerate(zip(live, lengths)):
            self._join(sequences, logits[row, length - 1], cache, row)

    def _prefill_chunk(self) -> None:
        """The next prefill_budget tokens of the long prompt being prefilled, after its earlier chunks in its cache
        (each chunk's tokens see the cached ones and each other, causally: what one forward of the whole prompt
        computes). After the last chunk its choices sample their first token and join the batch."""
        chunked = self._chunked
        chunked.sequences = [s for s in chunked.sequences if not s.request.cancelled.is_set()]
        if not chunked.sequences:
            self._chunked = None
            return
        start, end = chunked.done, min(chunked.done + self.prefill_budget, len(chunked.prompt))
        tokens = torch.tensor([chunked.prompt[start:end]], device=self.device)  # (1, chunk)
        logits, _ = self.model(tokens, kv_cache=chunked.cache)  # (1, chunk, V); the cache now holds 0 .. end - 1
        chunked.done = end
        if end == len(chunked.prompt):
            self._chunked = None
            self._join(chunked.sequences, logits[0, -1], chunked.cache, 0)

    def _join(self, sequences: list[_Sequence], last_logits: torch.Tensor, cache: BatchedKVCache, row: int) -> None:
        """A prefilled prompt's choices sample their first token from its last position's (V,) logits (the same for
        every choice), each with its own generator, then join the batch as rows holding a copy of row `row` of the
        prompt's cache."""
        try:
            chosen = self._next(sequences, last_logits.expand(len(sequences), -1))
        except Exception as error:
            self._fail([s.request for s in sequences], error, "sampling failed for one prompt")
            return
        for sequence, (token, logprob) in zip(sequences, chosen):
            if not self._send(sequence, token, logprob):
                self._cache.add(cache, row)
                self._active.append(sequence)

    def _generator(self, seed: int | None) -> torch.Generator:
        generator = torch.Generator(device=self.device)
        generator.manual_seed(seed) if seed is not None else generator.seed()
        return generator

    @staticmethod
    def _fail(requests: list[Request], error: Exception, what: str) -> None:
        """A bug or an impossible setting: its traceback is logged, and these requests hear of it."""
        log.exception(what, exc_info=error)
        for request in requests:
            request.emit(("error", f"internal error ({type(error).__name__})"))

    def _decode_step(self) -> None:
        last_tokens = torch.tensor([[s.last_token] for s in self._active], device=self.device)  # (B, 1)
        logits, _ = self.model(last_tokens, kv_cache=self._cache)  # (B, 1, V): every active sequence, one pass
        try:
            chosen = self._next(self._active, logits[:, -1])
        except Exception:  # one row's settings broke the batch's sampling: each row alone, and only those that
            chosen = [self._next_alone(s, row) for s, row in zip(self._active, logits[:, -1])]  # fail end
        self._leave({i for i, (sequence, (token, logprob)) in enumerate(zip(self._active, chosen))
                     if token is None or self._send(sequence, token, logprob)})

    def _next_alone(self, sequence: _Sequence, logits: torch.Tensor) -> tuple[int | None, TokenLogprob | None]:
        """One sequence's next token from its (V,) logits, or None (and an error to its request) if sampling fails."""
        try:
            return self._next([sequence], logits[None])[0]
        except Exception as error:
            self._fail([sequence.request], error, "sampling failed for one request")
            return None, None

    def _next(self, sequences: list[_Sequence], logits: torch.Tensor) -> list[tuple[int, TokenLogprob | None]]:
        """Each sequence's next token from its row of (B, V) logits, and its log-probability if the request asks."""
        tokens = self._sample(sequences, logits)
        wanted = [row for row, s in enumerate(sequences) if s.request.logprobs is not None]
        logprobs: list[TokenLogprob | None] = [None] * len(sequences)
        if wanted:
            log_probs = torch.log_softmax(logits[wanted].float(), dim=-1)  # (W, V): the model's, before temperature
            n_top = max(sequences[row].request.logprobs for row in wanted)
            top_values, top_ids = log_probs.topk(n_top, dim=-1) if n_top else (log_probs[:, :0], log_probs[:, :0])
            for i, row in enumerate(wanted):
                n = sequences[row].request.logprobs
                logprobs[row] = TokenLogprob(float(log_probs[i, tokens[row]]),
                                             list(zip(top_ids[i, :n].tolist(), top_values[i, :n].tolist())))
        return list(zip(tokens, logprobs))

    def _send(self, sequence: _Sequence, token: int, logprob: TokenLogprob | None = None) -> bool:
        """Send a sequence's new token (or its end); True when the sequence is done."""
        request = sequence.request
        if token in request.stop_ids:
            request.emit(("done", "stop"))
            return True
        sequence.last_token, sequence.generated = token, sequence.generated + 1
        request.emit(("token", token, logprob))
        # feeding this token back would put it at position len(prompt) + generated - 1: past the context?
        if sequence.generated >= request.max_tokens or len(request.prompt_ids) + sequence.generated > self.max_seq_len:
            request.emit(("done", "length"))
            return True
        return False

    @staticmethod
    def _sample(sequences: list[_Sequence], logits: torch.Tensor) -> list[int]:
        """Each sequence's next token from its row of (B, V) logits, with its own settings and generator."""
        requests = [s.request for s in sequences]
        return sample_rows(logits, [r.temperature for r in requests], [r.top_k for r in requests],
                           [r.top_p for r in requests],
                           [s.generator for s in sequences])

    def _leave(self, rows: set[int]) -> None:
        """These rows leave the batch (finished or abandoned); their rows are freed at once. The cache moves its last
        row into a freed one, and the list of sequences does the same, so row i stays self._active[i]."""
        for row in sorted(rows, reverse=True):  # from the last: a row still to free is never the one moved
            self._cache.remove(row)
            self._active[row] = self._active[-1]
            self._active.pop()


def greedy_replies(model, prompts: list[list[int]], max_tokens: int, stop_ids: frozenset[int],
                   max_batch: int = 32) -> list[list[int]]:
    """Each prompt's greedy reply (token ids, without the stop token), generated together by an Engine: for work
    that wants many replies at once (bench.chat's measurements, preference pairs made from the model's own replies).
    Prompts longer than the model's context keep their last tokens. An engine error is raised here."""
    engine = Engine(model, max_batch=max_batch, threads=None)
    results: list[list[int]] = [[] for _ in prompts]
    done = [threading.Event() for _ in prompts]
    errors: list[str] = []
    try:
        for i, prompt in enumerate(prompts):
            def emit(event, i=i):
                if event[0] == "token":
                    results[i].append(event[1])
                else:
                    if event[0] == "error":
                        errors.append(event[1])
                    done[i].set()
            engine.submit(Request(prompt[-engine.max_seq_len:], max_tokens, emit, temperature=0.0,
                                  stop_ids=stop_ids))
        for event in done:
            event.wait()
    finally:
        engine.close()
    if errors:
        raise RuntimeError(f"generating replies failed: {errors[0]}")
    return results
