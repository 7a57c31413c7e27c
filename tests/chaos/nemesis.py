"""The nemesis of the chaos harness: about every 10 s one fault from the current subset of the
requested faults; about every 30 s a new random subset (sometimes none: a quiet spell). Every
fault heals by itself after a few seconds; at the end everything heals at once.

At most one node is "down" at a time (killed, paused, cut off its peers, cut off the store):
a majority of the quorum always stays. Store faults (latency, 503 SlowDown, resets,
ambiguous writes) degrade rather than take down, and may overlap a down fault.

Faults:
  kill       kill -9 a random node, restart it (same config, data dir, port) 2-6 s later.
  pause      SIGSTOP a node for 2-5 s (past the 1.5 s session timeout), then SIGCONT.
  partition  cut a node off the other nodes (its P(i->*) and P(*->i) proxies refuse+reset, or
             blackhole) or off the object store only (its S(i) proxy), for 3-8 s.
  store      object-store faults through S(i) of one node (sometimes of every node) for 3-8 s:
             200-800 ms latency per request, 503 SlowDown answers, connection resets, or
             ambiguous writes (forwarded, then the response is cut off).
  leader     kill -9 the metadata (Raft) leader, restart it 2-6 s later.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter

ALL_FAULTS = ("kill", "pause", "partition", "store", "leader")
DOWN = {"kill", "pause", "partition", "leader"}


class Fault:
    def __init__(self, kind, sub, node, heal_at, heal, down):
        self.kind, self.sub, self.node = kind, sub, node
        self.heal_at, self.heal_fn, self.down = heal_at, heal, down
        self.healing = False
        self.healed = threading.Event()


class Nemesis(threading.Thread):
    def __init__(self, cluster, faults, seconds, rng: random.Random, t0: float, log,
                 interval=(8.0, 12.0), switch=(25.0, 35.0), warmup=5.0):
        super().__init__(name="nemesis", daemon=True)
        self.cluster = cluster
        self.faults = list(faults)
        self.seconds = seconds
        self.rng = rng
        self.t0 = t0
        self.logf = log
        self.interval, self.switch, self.warmup = interval, switch, warmup
        self.active: list[Fault] = []
        self.lock = threading.Lock()
        self.injected = Counter()
        self.detail = Counter()
        self.events: list[dict] = []
        self.busy_skips = 0
        self.restart_problems: list[str] = []
        self.subsets: list[tuple[float, list[str]]] = []
        self.stop_event = threading.Event()
        self.finished = threading.Event()
        self.error = None

    def now(self):
        return time.monotonic() - self.t0

    def log(self, what, **kw):
        e = {"t": round(self.now(), 3), "event": what, **kw}
        with self.lock:
            self.events.append(e)
        self.logf(f"[{e['t']:8.2f}] nemesis {what} " + " ".join(f"{k}={v}" for k, v in kw.items()))

    # -- the loop --------------------------------------------------------------------

    def run(self):
        try:
            self._run()
        except Exception as e:  # a harness bug: report it, and still heal
            import traceback
            self.error = traceback.format_exc()
            self.log("error", error=repr(e))
        finally:
            self.heal_all()
            self.finished.set()

    def _run(self):
        end = self.t0 + self.seconds
        next_inject = time.monotonic() + self.warmup
        next_switch = time.monotonic()
        subset = []
        while not self.stop_event.is_set() and time.monotonic() < end:
            self._heal_due()
            now = time.monotonic()
            if now >= next_switch:
                if self.rng.random() < 0.15 or not self.faults:  # (--faults none)
                    subset = []
                else:
                    k = self.rng.randint(1, len(self.faults))
                    subset = sorted(self.rng.sample(self.faults, k))
                self.subsets.append((round(self.now(), 2), subset))
                self.log("subset", faults=",".join(subset) or "none")
                next_switch = now + self.rng.uniform(*self.switch)
            if now >= next_inject and now < end - 1.0:
                next_inject = now + self.rng.uniform(*self.interval)
                if subset:
                    self._inject_one(subset, end)
            time.sleep(0.1)

    def _down_active(self) -> bool:
        with self.lock:
            return any(f.down and not f.healed.is_set() for f in self.active)

    def _store_active(self) -> bool:
        with self.lock:
            return any(f.kind == "store" and not f.healed.is_set() for f in self.active)

    def _inject_one(self, subset, end):
        choices = list(subset)
        if self._down_active():
            choices = [c for c in choices if c not in DOWN]
        if self._store_active():
            choices = [c for c in choices if c != "store"]
        if not choices:
            self.busy_skips += 1
            self.log("skip", reason="a fault of that kind is still active")
            return
        kind = self.rng.choice(choices)
        # Faults heal in time for the end, and at the latest at the end.
        getattr(self, "_inject_" + kind)()

    def _add(self, kind, sub, node, duration, heal, down):
        f = Fault(kind, sub, node, time.monotonic() + duration, heal, down)
        with self.lock:
            self.active.append(f)
        self.injected[kind] += 1
        self.detail[f"{kind}:{sub}"] += 1
        return f

    def _heal_due(self):
        now = time.monotonic()
        with self.lock:
            due = [f for f in self.active if not f.healing and f.heal_at <= now]
            for f in due:
                f.healing = True
        for f in due:
            self._heal(f)
        with self.lock:
            self.active = [f for f in self.active if not f.healed.is_set()]

    def _heal(self, f: Fault, wait=False):
        def go():
            try:
                f.heal_fn()
            except Exception as e:
                self.log("heal-error", kind=f.kind, node=f.node, error=repr(e))
            finally:
                f.healed.set()
        if f.kind in ("kill", "leader"):
            # Restarting waits for the node to be ready: not on the nemesis loop.
            t = threading.Thread(target=go, daemon=True)
            t.start()
            if wait:
                t.join()
        else:
            go()

    def heal_all(self):
        with self.lock:
            todo = [f for f in self.active if not f.healing]
            for f in todo:
                f.healing = True
            pending = list(self.active)
        for f in todo:
            self._heal(f)
        for f in pending:
            f.healed.wait(180)
        with self.lock:
            self.active = []
        # Belt and braces: every proxy open, every node running and not stopped.
        c = self.cluster
        names = [c.pname(i, j) for (i, j) in c.peer_proxy] + [c.sname(i) for i in range(c.n)]
        c.proxies.set(names, clear=True)
        for i in range(c.n):
            c.resume(i)
            if not c.nodes[i].running():
                ok, what = c.restart(i)
                if not ok:
                    self.restart_problems.append(f"node {i + 1} not restartable at heal: {what}")
        self.log("healed-all")

    # -- the faults ------------------------------------------------------------------

    def _restart(self, i, kind):
        ok, what = self.cluster.restart(i)
        self.log("restarted" if ok else "restart-failed", kind=kind, node=i + 1, detail=what)
        if not ok or what != "ok":
            self.restart_problems.append(f"node {i + 1} after {kind}: {what}")

    def _inject_kill(self, node=None, kind="kill", sub="random"):
        i = self.rng.randrange(self.cluster.n) if node is None else node
        if not self.cluster.nodes[i].running():
            self.log("skip", reason=f"node {i + 1} not running")
            return
        d = self.rng.uniform(2, 6)
        self.cluster.kill9(i)
        self._add(kind, sub, i, d, lambda: self._restart(i, kind), True)
        self.log("inject", kind=kind, node=i + 1, restart_in=f"{d:.1f}s", how=sub)

    def _inject_leader(self):
        i, how = self.cluster.leader()
        if i is None:
            i, how = 0, "none known: node 1"
        self._inject_kill(node=i, kind="leader", sub=how.split()[0])
        self.log("leader-found", node=i + 1, how=how)

    def _inject_pause(self):
        i = self.rng.randrange(self.cluster.n)
        if not self.cluster.nodes[i].running():
            return
        d = self.rng.uniform(2, 5)
        self.cluster.pause(i)

        def heal():
            self.cluster.resume(i)
            self.log("resumed", node=i + 1)
        self._add("pause", "sigstop", i, d, heal, True)
        self.log("inject", kind="pause", node=i + 1, duration=f"{d:.1f}s")

    def _inject_partition(self):
        c = self.cluster
        i = self.rng.randrange(c.n)
        d = self.rng.uniform(3, 8)
        mode = self.rng.choice(["refuse", "blackhole"])
        if self.rng.random() < 0.7:
            names, sub = c.peer_links(i), f"peers-{mode}"
        else:
            names, sub = [c.sname(i)], f"store-{mode}"
        c.proxies.set(names, mode=mode)

        def heal():
            c.proxies.set(names, mode="open")
            self.log("reconnected", node=i + 1, how=sub)
        self._add("partition", sub, i, d, heal, True)
        self.log("inject", kind="partition", node=i + 1, how=sub, duration=f"{d:.1f}s")

    def _inject_store(self):
        c = self.cluster
        d = self.rng.uniform(3, 8)
        every = self.rng.random() < 0.25
        nodes = list(range(c.n)) if every else [self.rng.randrange(c.n)]
        sub = self.rng.choice(["latency", "slowdown", "reset", "ambiguous", "mixed"])
        params = {
            "latency": {"latency": [200, 800]},
            "slowdown": {"fail": self.rng.uniform(0.2, 0.6)},
            "reset": {"reset": self.rng.uniform(0.1, 0.4)},
            "ambiguous": {"ambiguous": self.rng.uniform(0.1, 0.4)},
            "mixed": {"latency": [100, 500], "fail": 0.15, "reset": 0.1, "ambiguous": 0.1},
        }[sub]
        names = [c.sname(i) for i in nodes]
        c.proxies.set(names, **params)

        def heal():
            c.proxies.set(names, latency=None, fail=0, reset=0, ambiguous=0)
            self.log("store-healed", nodes=",".join(str(i + 1) for i in nodes))
        self._add("store", sub, nodes[0] if not every else None, d, heal, False)
        self.log("inject", kind="store", how=sub, nodes="all" if every else nodes[0] + 1,
                 duration=f"{d:.1f}s", params=params)
