"""Scale-out: running one job over several processes or machines."""
