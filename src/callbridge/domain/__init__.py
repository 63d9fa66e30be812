"""The pure core: PBX-neutral call facts, the call state machine, and the ports it needs."""
