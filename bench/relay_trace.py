"""Where a packet's time goes in the relay (`make bench-relay`, latency rounds): time stamps around the
engine's own steps, taken by wrapping its objects in the benchmark's engine process."""

from __future__ import annotations

import statistics
import time

from relay_wire import SEND_STAMP


def trace_engine(engine) -> list[list[int]]:
    """Time stamps (CLOCK_MONOTONIC ns, as the generator's send stamp in the payload) of every received batch:
    [sent (first packet's stamp), relay entered epoll, epoll returned, recvmmsg returned, classified (egress
    starts), first output sent, all outputs sent, packets]. Wraps the engine's own objects; tracing round only."""
    records: list[list[int]] = []
    clock = time.monotonic_ns
    poller, receiver, egress, ring = engine.poller, engine.ingest.media_receiver, engine.egress, engine.ring
    poll_times = [0, 0]

    class TimedPoller:  # select.epoll's methods cannot be replaced on the object itself
        def poll(self, timeout: float = -1) -> list:
            poll_times[0] = clock()
            events = poller.poll(timeout)
            poll_times[1] = clock()
            return events

        def __getattr__(self, name: str):
            return getattr(poller, name)

    engine.poller = engine.topology.poller = TimedPoller()
    receive, forward_batches, send_gathered = receiver.receive, egress.forward_batches, egress._send_gathered

    def timed_receive() -> tuple[int, int]:
        first, count = receive()
        if count:
            stamp = SEND_STAMP.unpack_from(ring.data, first * ring.slot_bytes + 13)[0]
            records.append([stamp, poll_times[0], poll_times[1], clock(), 0, 0, 0, count])
        return first, count

    def timed_forward(batches: list, now: float) -> None:
        records[-1][4] = clock()
        forward_batches(batches, now)
        records[-1][6] = clock()

    def timed_send(output, batch) -> None:
        send_gathered(output, batch)
        if not records[-1][5]:
            records[-1][5] = clock()

    receiver.receive, egress.forward_batches, egress._send_gathered = timed_receive, timed_forward, timed_send
    return records


def trace_summary(records: list[list[int]]) -> dict:
    """Median and p99 µs of each step of the steady part (the first fifth is the warm-up)."""
    steady = [record for record in records[len(records) // 5 :] if all(record[4:7])]
    if not steady:
        return {}
    steps = {
        # A packet that arrived while the relay was still busy with the previous batch waited there; one that
        # arrived while it slept in epoll waited for the kernel to wake it.
        "queued behind the previous batch": [max(0, entered - sent) for sent, entered, *_rest in steady],
        "kernel → relay woke (epoll)": [woke - max(sent, entered) for sent, entered, woke, *_rest in steady],
        "recvmmsg": [received - woke for _sent, _entered, woke, received, *_rest in steady],
        "validate, admit, group": [record[4] - record[3] for record in steady],
        "rewrite + send, receiver 1": [record[5] - record[4] for record in steady],
        "rewrite + send, the other receivers": [record[6] - record[5] for record in steady],
        "total, first packet of the batch": [record[5] - record[0] for record in steady],
    }
    summary = {"batches": len(steady), "mean_packets": statistics.mean(record[7] for record in steady)}
    for name, values in steps.items():
        values.sort()
        summary[name] = (values[len(values) // 2] / 1000, values[int(len(values) * 0.99)] / 1000)
    return summary
