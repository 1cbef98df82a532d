"""The benchmark's output: markdown tables of medians with min and max, ratios between columns,
the memory table, and the writing of one section of docs/benchmarks.md (bench/bench.py)."""
import os
import re
import statistics


def fmt(v):
    if v is None:
        return "failed"
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def summary(values):
    """(median, min, max) of the values that did not fail, or None if all failed."""
    ok = [x for x in values if x is not None]
    if not ok:
        return None
    return statistics.median(ok), min(ok), max(ok)


def cell(values):
    s = summary(values)
    if s is None:
        return "failed"
    med, lo, hi = s
    if len(values) == 1:
        return fmt(med)
    return f"{fmt(med)} ({fmt(lo)}–{fmt(hi)})"


def ratio(a, b):
    """The ratio of the medians, marked `*` when the two columns' min–max ranges do not overlap
    (every round of one beat every round of the other): unmarked, the run does not tell them
    apart."""
    sa, sb = summary(a or []), summary(b or [])
    if sa is None or sb is None or not sb[0]:
        return "n/a"
    apart = len([v for v in a if v is not None]) > 1 and (sa[1] > sb[2] or sa[2] < sb[1])
    return f"{sa[0] / sb[0]:.2f}{'*' if apart else ''}"


def table(labels, rows, samples, ratios):
    """rows: [(row name, unit)]; samples[label][row] = [values, one per round]; ratios:
    [(heading, numerator label, denominator label)], computed from the medians."""
    head = ["workload", "unit", *labels, *[h for h, _, _ in ratios]]
    out = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
    for name, unit in rows:
        cells = [name, unit]
        cells += [cell(samples[label].get(name, [None])) for label in labels]
        cells += [ratio(samples[num].get(name), samples[den].get(name)) for _, num, den in ratios]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def slot_sizes(root):
    """Region bytes per live inode and per open handle, as the code defines them: the slot bodies'
    sizes asserted in src/state/inodes.rs and handles.rs, the dense slot header (src/state/slots.rs:
    four 4-byte words) and the key index's two 4-byte cells per inode slot
    (src/state/keyindex.rs). None where the source no longer says."""

    def asserted(path, ty):
        try:
            text = open(os.path.join(root, path)).read()
        except OSError:
            return None
        m = re.search(rf"size_of::<{ty}>\(\) == (\d+)", text)
        return int(m.group(1)) if m else None

    inode, handle = asserted("src/state/inodes.rs", "InodeSlot"), asserted("src/state/handles.rs", "HandleSlot")
    header, index = 16, 8
    return (inode + header + index if inode else None, handle + header if handle else None)


def memory_table(mem, per_inode, per_handle):
    """mem: {label: {"procs": [(role, rss_kib, hwm_kib)], "status": {...} or None}}."""
    out = [
        "| daemon | process | RSS at end | peak RSS | state region | live inodes | open handles |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for label, m in mem.items():
        st = m.get("status") or {}
        region = f"{st['state_region_bytes'] / (1 << 20):.1f} MiB" if "state_region_bytes" in st else ""
        for i, (role, rss, hwm) in enumerate(m["procs"]):
            extra = [region, f"{st.get('live_inodes', '')}", f"{st.get('open_handles', '')}"] if i == 0 else ["", "", ""]
            out.append(f"| {label if i == 0 else ''} | {role} | {rss / 1024:.1f} MiB | {hwm / 1024:.1f} MiB | "
                       + " | ".join(extra) + " |")
    note = ""
    if per_inode and per_handle:
        note = (f"\n\nRegion bytes as the code defines them: {per_inode} per live inode (a {per_inode - 24}-byte "
                f"slot, its 16-byte header in the dense header array, 8 bytes of key index) and {per_handle} per "
                "open handle (slot and header); the region is sized by capacity, not by use.")
    return "\n".join(out) + note


def write_section(doc, heading, body):
    """Replaces the `heading` section of `doc` (up to the next '## ' heading), or appends it; the
    rest of the file is left as it is, so each benchmark script owns only its own section."""
    text = open(doc).read() if os.path.exists(doc) else "# Benchmarks\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, l in enumerate(lines) if l.rstrip() == heading), None)
    new = heading + "\n\n" + body.rstrip() + "\n"
    if start is None:
        out = text.rstrip("\n") + "\n\n" + new
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        tail = "".join(lines[end:])
        out = "".join(lines[:start]) + new + ("\n" + tail if tail else "")
    with open(doc, "w") as f:
        f.write(out)
