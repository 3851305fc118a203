"""The write path: the Faust app, its topics and agents, and the code that turns a micro-batch into Redis writes."""
