"""The recorder (egress): records live sessions the data plane sends it as RTP, with ffmpeg `-c copy`."""
