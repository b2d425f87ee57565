"""What the benchmarks share."""

# Ordinary prose: prompts and evidence are windows of it.
TEXT = ("The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined "
        "movable metal type with an oil-based ink and a screw press adapted from those used to make wine. "
        "Within a few decades, print shops had spread to most of the major cities of Europe, and the price of "
        "books fell sharply. Scholars could now compare identical copies of a text, which changed the way "
        "knowledge was checked, shared and argued about. ") * 4
