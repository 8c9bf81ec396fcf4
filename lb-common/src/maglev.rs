//! Weighted Maglev table builder (userspace only). Placeholder: filled in below.
