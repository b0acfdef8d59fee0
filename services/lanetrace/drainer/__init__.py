"""The drainer process: moves one registry shard of every target from shared
memory to the writer (drainer.py), with batches pipelined to the writer
(pipeline.py) and detail rings held as pre-roll (preroll.py)."""
