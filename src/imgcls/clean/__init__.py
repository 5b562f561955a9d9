"""Label cleaning: find mislabelled, off-topic and low-quality images, and review them."""
