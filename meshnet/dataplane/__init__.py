"""The data plane: kernel plumbing, bridge, attach, switch, sleeve, fastdp."""
