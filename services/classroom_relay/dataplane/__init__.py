"""Media data plane of the classroom relay.

Runs in its own OS process (``python -m services.classroom_relay.dataplane``), never under eventlet.
Small parts with one job each, in the spirit of LiveKit's ``pkg/sfu``; docs/relay-dataplane.md follows
one packet through them.

The loop, in the order a packet meets it:

- ``engine``     the epoll loop and its timers; builds and ties the parts below
- ``ingest``     receives batches into the ring, validates, admits and groups them per layer
- ``egress``     hands each output its layer's packets: rewrite, pace, send (sendmmsg / UDP GSO)
- ``feedback``   RTCP in and out: reports, NACK answers, keyframe requests
- ``topology``   sessions, branches and senders as the control plane wants them; sender admission
- ``streams``    the data: sessions, tracks, layers, outputs, and the tables the loop looks them up in
- ``stats``      the snapshot of every counter

Their building blocks:

- ``udpbatch``   recvmmsg into the ring, sendmmsg / GSO out of it (ctypes)
- ``rtp``        RTP header parsing and validation with counted drop reasons
- ``h264``       keyframe detection in H.264 RTP payloads
- ``buffer``     preallocated packet ring doubling as the retransmission (NACK) cache
- ``forwarder``  per-output SSRC / sequence / timestamp rewriting across layer switches
- ``allocator``  per-output simulcast layer choice against a byte budget
- ``pacer``      per-output token bucket and queue
- ``rtcp``       RTCP parsing and building, receiver statistics, keyframe-request throttling
- ``admission``  join tokens and sender pinning

Around the loop:

- ``protocol``   the control channel's wire format and client (standard library only: the control plane
                 imports this and nothing else of the data plane)
- ``control``    the control channel's server, applying requests to the engine
- ``metrics``    Prometheus exporter on its own registry
"""
