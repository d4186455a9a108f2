"""Execution workers: threads that run queued executions, and one that claims them.

One listener thread wakes the claimer on ``NOTIFY`` (an enqueue) and on a
polling tick (the backstop for a dead LISTEN connection and for leases that
expire without any notification). The claimer claims as many executions as
there are idle runner threads, in one statement that also reads their
events (``ExecutionQueue.claim_loaded``), and hands one to each: a backlog
of N runs starts in about N / ``concurrency`` round trips instead of 2 N (a
claim and a load per run, per thread). It never claims more than the idle
threads take at once, so a claimed row does not wait on its lease for a
thread: ``concurrency`` is still how many run at once in this process.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import structlog

from commands.executions import ExecutionRunner, default_worker_id
from infrastructure.queue import ExecutionQueue, LoadedClaim, wait_for_enqueue

log = structlog.get_logger("reporunner.worker")

_MAX_BACKOFF_S = 10.0


@dataclass
class Worker:
    runner: ExecutionRunner
    queue: ExecutionQueue
    concurrency: int
    lease_s: float
    poll_s: float = 1.0

    def __post_init__(self) -> None:
        self.worker_id = default_worker_id("worker")
        # Guards the hand-over: claims ready for a thread, and how many threads wait.
        self._wake = threading.Condition()
        self._ready: deque[LoadedClaim] = deque()
        self._idle = 0
        # The latest claim's failure (None: it claimed), for /readyz.
        self._claim_error: str | None = None

    def claim_problem(self) -> str | None:
        """Why this worker cannot claim executions, while its latest claim fails."""
        if self._claim_error is None:
            return None
        return (
            f"the {self.concurrency} workers of {self.worker_id} cannot claim: {self._claim_error}"
        )

    def start(self, stop: threading.Event) -> list[threading.Thread]:
        threads = [
            threading.Thread(
                target=self._listen, args=(stop,), name="worker-listener", daemon=True
            ),
            threading.Thread(target=self._claim, args=(stop,), name="worker-claimer"),
        ]
        threads += [
            threading.Thread(target=self._work, args=(stop,), name=f"worker-{i}")
            for i in range(self.concurrency)
        ]
        for thread in threads:
            thread.start()
        log.info("workers started", worker_id=self.worker_id, concurrency=self.concurrency)
        return threads

    def _notify_all(self) -> None:
        with self._wake:
            self._wake.notify_all()

    def _listen(self, stop: threading.Event) -> None:
        backoff = 0.1
        while not stop.is_set():
            try:
                with self.queue.listening() as conn:
                    backoff = 0.1
                    while not stop.is_set():
                        wait_for_enqueue(conn, self.poll_s)
                        self._notify_all()
            except Exception as exc:  # lost connection: wake the claimer, retry
                log.warning("worker listener reconnecting", error=str(exc))
                self._notify_all()
                stop.wait(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF_S)

    def _claim(self, stop: threading.Event) -> None:
        """Claim for the idle threads until ``stop``; then give back what none started."""
        backoff = 0.1
        try:
            while not stop.is_set():
                with self._wake:
                    free = self._idle - len(self._ready)
                    if free <= 0:
                        self._wake.wait(self.poll_s)  # until a thread is done
                        continue
                claimed = self.claim_round(free)
                if claimed is None:  # the database is away: back off, retry
                    stop.wait(backoff)
                    backoff = min(backoff * 2, _MAX_BACKOFF_S)
                    continue
                backoff = 0.1
                with self._wake:
                    if claimed:
                        self._ready.extend(claimed)
                        self._wake.notify_all()
                    else:
                        self._wake.wait(self.poll_s)  # until an enqueue or the tick
        finally:
            self._release_unstarted()

    def claim_round(self, limit: int) -> list[LoadedClaim] | None:
        """One claim of up to ``limit`` executions; None if it failed (noted for /readyz)."""
        try:
            claimed = self.queue.claim_loaded(self.worker_id, self.lease_s, limit)
        except Exception as exc:
            self._claim_error = f"{type(exc).__name__}: {str(exc).strip()}"
            log.warning("claim failed", worker_id=self.worker_id, error=str(exc))
            return None
        self._claim_error = None
        return claimed

    def _release_unstarted(self) -> None:
        """Give back the claims no thread took (stopping): another worker runs them now,
        not after their lease."""
        with self._wake:
            left = list(self._ready)
            self._ready.clear()
        for loaded in left:
            try:
                self.queue.release(loaded.claim.execution_id, self.worker_id)
            except Exception as exc:  # its lease expires instead
                log.warning("release failed", error=str(exc))

    def _work(self, stop: threading.Event) -> None:
        while True:
            with self._wake:
                self._idle += 1
                self._wake.notify_all()  # the claimer may claim for this thread
                while not self._ready and not stop.is_set():
                    self._wake.wait(self.poll_s)
                self._idle -= 1
                if stop.is_set():
                    return
                loaded = self._ready.popleft()
            self._run(loaded)

    def _run(self, loaded: LoadedClaim) -> None:
        claim = loaded.claim
        structlog.contextvars.bind_contextvars(execution_id=str(claim.execution_id))
        try:
            execution = self.runner.run_claimed(
                claim.execution_id, claim.claims, self.worker_id, stored=loaded.events
            )
            log.info(
                "execution done",
                status=execution.status if execution else "missing",
                claims=claim.claims,
                correlation_id=execution.correlation_id if execution else None,
            )
        except Exception:
            # The row stays leased; when the lease expires the next
            # claim settles it. Never let one execution kill the worker.
            log.exception("execution could not be settled")
        finally:
            structlog.contextvars.unbind_contextvars("execution_id")
