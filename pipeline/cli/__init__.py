"""The command line: click commands (`commands`) and their option types (`options`)."""
