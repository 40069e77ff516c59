"""Probes of a member on the device: accuracy and loss on every probe set (``evaluate``), and the mechanistic
measures of attention and of where an answer comes from (``mechanisms``)."""
