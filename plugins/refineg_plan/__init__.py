"""`refineg plan`: what the MLLM stages of a config will cost, before any call."""
