"""Running a stack on this host: secrets, state, processes, probes and the supervisor."""
