"""Generated code for the KServe v2 / Open Inference Protocol (``protos/kserve/v2``)."""
