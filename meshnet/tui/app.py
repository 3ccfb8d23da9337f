"""`meshnet tui`: the live view of one router — peers, traffic, events, IPAM and DNS.

The app is given a snapshot source (the daemon's stream, or a recording in tests) and a model
that turns snapshots into rows and rates; it only draws. When the source fails the app says so
and tries again, so it can be left open across daemon restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, ClassVar

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.css.query import NoMatches
from textual.screen import ModalScreen
from textual.widgets import (
    DataTable,
    Footer,
    Header,
    Input,
    RichLog,
    Static,
    TabbedContent,
    TabPane,
    Tree,
)
from textual.widgets.tree import TreeNode

from meshnet.api.events import Event
from meshnet.tui.model import (
    PEER_COLUMNS,
    Model,
    TopologyNode,
    format_bytes,
    format_rate,
    matches,
    route_tree,
    sparkline,
)
from meshnet.tui.source import SnapshotSource, SourceUnavailable

SPARK_WIDTH = 12
TABS = ("peers", "flows", "events", "ipam", "dns", "topology")

HELP = """\
[b]meshnet tui[/b] — the live view of this host's router

  [b]1[/b]-[b]6[/b]       peers, flows, events, IPAM, DNS, topology
  [b]tab[/b]       next panel / widget
  [b]↑ ↓[/b]       move in a table
  [b]/[/b]         filter rows (every word must match)
  [b]escape[/b]    clear the filter
  [b]r[/b]         reconnect now
  [b]?[/b]         this help
  [b]q[/b]         quit

Peers: path is [i]sleeve[/i] (UDP, direct), [i]fastdp[/i] (kernel VXLAN) or
[i]relayed via X[/i]; RTT is the UDP path's. Flows: rates from the
daemon's counters, one sample per snapshot, sparklines of the last
{history} samples.

Press escape to close."""


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,question_mark,q", "dismiss", "close"),
    ]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > Static {
        width: auto; max-width: 76; height: auto; max-height: 22;
        border: round $accent; padding: 0 1; background: $panel;
    }
    """

    def __init__(self, history: int) -> None:
        super().__init__()
        self._text = HELP.format(history=history)

    def compose(self) -> ComposeResult:
        yield Static(self._text, id="help-text")


class MeshnetTui(App[None]):
    TITLE = "meshnet"
    AUTO_FOCUS = "#peers-table"
    CSS = """
    #status { height: 1; padding: 0 1; background: $boost; }
    #status.down { background: $error; color: $text; }
    #filter { display: none; height: 3; }
    #filter.shown { display: block; }
    #tabs, TabPane, TabPane > Vertical { height: 1fr; }
    DataTable { height: 1fr; }
    #ipam-summary, #dns-summary { height: auto; padding: 0 1; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "quit"),
        Binding("question_mark", "help", "help"),
        Binding("slash", "filter", "filter"),
        Binding("escape", "clear_filter", "clear filter", show=False),
        Binding("r", "reconnect", "reconnect", show=False),
        *(Binding(str(i + 1), f"show_tab('{tab}')", tab, show=False) for i, tab in enumerate(TABS)),
    ]

    def __init__(self, source: SnapshotSource, *, retry: float = 2.0) -> None:
        super().__init__()
        self.source = source
        self.retry = retry
        self.model = Model()
        self.connected = False
        self.filter_text = ""
        self.problem = "connecting…"
        self.snapshots_seen = 0
        self._wake = asyncio.Event()
        self._drawn_topology: tuple[TopologyNode | None, list[str]] | None = None

    # --- layout

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("connecting…", id="status")
        yield Input(
            placeholder="filter: words that must all match; enter keeps it, escape clears",
            id="filter",
            disabled=True,  # not focusable until `/`
        )
        with TabbedContent(id="tabs", initial="peers"):
            with TabPane("1 Peers", id="peers"):
                yield DataTable(id="peers-table", cursor_type="row", zebra_stripes=True)
            with TabPane("2 Flows", id="flows"):
                yield DataTable(id="flows-table", cursor_type="row", zebra_stripes=True)
            with TabPane("3 Events", id="events"):
                yield RichLog(id="event-log", wrap=True, markup=False, max_lines=1000)
            with TabPane("4 IPAM", id="ipam"), Vertical():
                yield Static("IPAM: no status yet", id="ipam-summary")
                yield DataTable(id="ipam-table", cursor_type="row", zebra_stripes=True)
            with TabPane("5 DNS", id="dns"), Vertical():
                yield Static("DNS: no status yet", id="dns-summary")
                yield DataTable(id="dns-table", cursor_type="row", zebra_stripes=True)
            with TabPane("6 Topology", id="topology"):
                yield Tree("routes from this host", id="topology-tree")
        yield Footer()

    def on_mount(self) -> None:
        # The panels live on the default screen; `self.query_one` would search the help
        # screen while it is open.
        self._main = self.screen
        self._main.query_one("#peers-table", DataTable).add_columns(*PEER_COLUMNS)
        self._main.query_one("#flows-table", DataTable).add_columns(
            "peer / container", "tx", "tx history", "rx", "rx history", "total tx/rx"
        )
        self._main.query_one("#ipam-table", DataTable).add_columns(
            "peer", "ranges", "size", "in use", "free", "share", "reachable"
        )
        self._main.query_one("#dns-table", DataTable).add_columns(
            "name", "address", "peer", "container"
        )
        self.sub_title = self.source.description
        self.run_worker(self._follow(), name="snapshots", exclusive=True)

    # --- the data

    async def _follow(self) -> None:
        while True:
            try:
                try:
                    async for snapshot in self.source.snapshots():
                        self.apply(snapshot)
                except SourceUnavailable as e:
                    self._went_away(str(e))
            except NoMatches:  # the app is closing: its widgets are gone
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):  # retry on time, or at once on `r`
                await asyncio.wait_for(self._wake.wait(), self.retry)

    def apply(self, snapshot: dict[str, Any]) -> None:
        """Show one snapshot (the worker calls this; tests may too)."""
        if not self.connected:
            self.connected = True
            self.model.reset_rates()
            self._log_text(f"connected to {self.source.description}", "green")
        self.snapshots_seen += 1
        for event in self.model.update(snapshot):
            self._log_event(event)
        summary = self.model.summary
        self.title = f"meshnet · {summary.nickname} ({summary.name})"
        self._show_status()
        self._draw()

    def _went_away(self, reason: str) -> None:
        self.problem = reason
        if self.connected:
            self._log_text(f"daemon gone: {reason}", "red")
        self.connected = False
        self._show_status()

    def _show_status(self) -> None:
        status = self._main.query_one("#status", Static)
        shown = f" · filter: {self.filter_text}" if self.filter_text else ""
        if self.connected:
            s = self.model.summary
            nat = f" · behind a {s.nat} NAT" if s.nat not in (None, "none") else ""
            status.update(
                f"● live · {s.peers} peers · {s.connections} connections · "
                f"encryption {'on' if s.encryption else 'off'}{nat}{shown}"
            )
            status.remove_class("down")
        else:
            status.update(
                f"✖ not connected: {self.problem} — retrying every {self.retry:g}s{shown}"
            )
            status.add_class("down")

    def _draw(self) -> None:
        self._draw_peers()
        self._draw_flows()
        self._draw_ipam()
        self._draw_dns()
        self._draw_topology()

    def _fill(self, table_id: str, rows: list[tuple[Any, ...]]) -> None:
        table = self._main.query_one(table_id, DataTable)
        cursor = table.cursor_row
        table.clear()
        for row in rows:
            if matches((str(c) for c in row), self.filter_text):
                table.add_row(*row)
        if table.row_count:
            table.move_cursor(row=min(cursor, table.row_count - 1))

    def _draw_peers(self) -> None:
        rows = []
        for p in self.model.peers:
            cells = p.cells()
            rows.append((Text(cells[0], style="bold") if p.local else cells[0], *cells[1:]))
        self._fill("#peers-table", rows)

    def _draw_flows(self) -> None:
        rows = [
            (
                f.label if f.kind == "peer" else f"▸ {f.label}",
                format_rate(f.tx_rate),
                Text(sparkline(f.tx_history, SPARK_WIDTH), style="green"),
                format_rate(f.rx_rate),
                Text(sparkline(f.rx_history, SPARK_WIDTH), style="cyan"),
                f"{format_bytes(f.tx_bytes)} / {format_bytes(f.rx_bytes)}",
            )
            for f in self.model.flow_rows()
        ]
        self._fill("#flows-table", rows)

    def _draw_ipam(self) -> None:
        summary = self._main.query_one("#ipam-summary", Static)
        ipam = self.model.ipam
        if ipam is None:
            summary.update("IPAM: this router runs without IPAM (or its status is unavailable)")
            self._fill("#ipam-table", [])
            return
        ipv6 = ipam.get("ipv6") or {}
        summary.update(
            f"range {ipam.get('range')} · default subnet {ipam.get('default_subnet')} · "
            f"{ipam.get('mode', '')}"
            + (" · awaiting consensus" if ipam.get("consensus") is False else "")
            + (f" · IPv6 range {ipv6.get('range')}" if ipv6.get("peers") else "")
        )
        rows = [
            (
                p.get("nickname", "") + (" (here)" if p.get("local") else "") + family,
                ", ".join(p.get("ranges", [])),
                str(p.get("size", "")),
                str(p.get("in_use", "")),
                str(p.get("free", "")),
                f"{100 * p.get('share', 0):.1f}%",
                "yes" if p.get("reachable") else "no",
            )
            for family, ring in (("", ipam), (" IPv6", ipv6))
            for p in ring.get("peers", [])
        ]
        self._fill("#ipam-table", rows)

    def _draw_topology(self) -> None:
        """The tree of routes from this host (rebuilt only when it changed, to keep the cursor)."""
        root, unreachable = route_tree(self.model.last or {})
        if (root, unreachable) == self._drawn_topology:
            return
        self._drawn_topology = (root, unreachable)
        tree: Tree[None] = self._main.query_one("#topology-tree", Tree)
        tree.clear()
        if root is None:
            tree.root.set_label("no topology yet")
            return
        tree.root.set_label(Text.assemble((root.nickname, "bold"), f" (this host) · {root.detail}"))

        def add(parent: TreeNode[None], node: TopologyNode) -> None:
            label = Text.assemble((node.nickname, "bold green"), f" · {node.detail}")
            if node.children:
                branch = parent.add(label, expand=True)
                for child in node.children:
                    add(branch, child)
            else:
                parent.add_leaf(label)

        for child in root.children:
            add(tree.root, child)
        for nickname in unreachable:
            tree.root.add_leaf(Text(f"{nickname} · unreachable", style="red"))
        tree.root.expand()

    def _draw_dns(self) -> None:
        summary = self._main.query_one("#dns-summary", Static)
        dns = self.model.dns
        if dns is None:
            summary.update("DNS: this router runs without DNS (or its status is unavailable)")
            self._fill("#dns-table", [])
            return
        summary.update(
            f"domain {dns.get('domain')} · {dns.get('state')} on {dns.get('listen') or '-'}"
        )
        rows = [
            (r.get("name", ""), r.get("address", ""), e.get("nickname", ""), r.get("container", ""))
            for e in dns.get("entries", [])
            for r in e.get("records", [])
        ]
        self._fill("#dns-table", rows)

    def _log_event(self, event: Event) -> None:
        style = "red" if event["kind"].endswith(("left", "down", "unreachable")) else ""
        stamp = time.strftime("%H:%M:%S", time.localtime(event.get("time", time.time())))
        self._main.query_one("#event-log", RichLog).write(
            Text(f"{stamp} {event['text']}", style=style)
        )

    def _log_text(self, text: str, style: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        self._main.query_one("#event-log", RichLog).write(Text(f"{stamp} {text}", style=style))

    # --- actions

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.model.history))

    def action_show_tab(self, tab: str) -> None:
        self._main.query_one("#tabs", TabbedContent).active = tab
        self._focus_panel()

    def _focus_panel(self) -> None:
        active = self._main.query_one("#tabs", TabbedContent).active
        widget = {"events": "#event-log", "topology": "#topology-tree"}.get(
            active, f"#{active}-table"
        )
        self._main.query_one(widget).focus()

    def action_filter(self) -> None:
        box = self._main.query_one("#filter", Input)
        box.disabled = False
        box.add_class("shown")
        box.focus()

    def action_clear_filter(self) -> None:
        box = self._main.query_one("#filter", Input)
        box.value = ""
        box.remove_class("shown")
        box.disabled = True
        self._set_filter("")
        self._focus_panel()

    def action_reconnect(self) -> None:
        self._wake.set()

    def on_input_changed(self, message: Input.Changed) -> None:
        self._set_filter(message.value)

    def on_input_submitted(self, message: Input.Submitted) -> None:
        self._focus_panel()

    def _set_filter(self, text: str) -> None:
        self.filter_text = text.strip()
        self._show_status()
        self._draw()
