"""The instruction agent (no ROS imports): plans long instructions as atomic steps (rules, a local
language model or Gemini), screens them for safety, runs code-as-policy programs in a sandbox, and
sequences the steps with per-step success checks, retries and cancellation. The instruction
server (`instruction_server.node`) is its ROS adapter."""
