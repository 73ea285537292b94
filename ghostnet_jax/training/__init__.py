"""Training: losses, optimizer and schedule, train state, pmapped steps, checkpoints and the loop."""
