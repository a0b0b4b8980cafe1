"""Execution engines for batch linking beyond one process: `ray_engine` (`gen-linker link
--engine ray`), a pool of Ray actors on this machine or a cluster. Each engine builds its
linkers through `gen_linker.load_linker` (the spec travels, not the objects) and writes the
same ordered, resumable output as `gen_linker.batch.link_to_file`."""
