/*
 * The cutover protocol of interview-store (SQLite -> PostgreSQL and back),
 * as a Promela model for Spin 6. See docs/model.md for what it covers and
 * what it does not, and docs/migrate-redesign.md for the protocol itself.
 *
 * Check it with `bash scripts/model-check.sh` (every property, and the old
 * step order's counterexample).
 *
 * Step-name convention (read by tests/model.rs): every named step of the
 * code (`Step::ALL` in src/migrate/phase.rs) is marked where the model takes
 * it by the statement
 *
 *     printf("step: <dotted name>\n")
 *
 * inside the atomic step it names (one mark per line, never in a comment).
 * tests/model.rs collects every such name outside the `#ifdef` regions (the
 * variants below) and compares the set with `Step::ALL`. The same lines make a replayed trail
 * (`spin -t`) read as the sequence of steps taken.
 *
 * Variants (preprocessor flags, `spin -D...`):
 *   OLD_ORDER  the switch as it was before the redesign (retire, record,
 *              make live as separate commits, no recorded intent); expected
 *              to FAIL with a stuck state.
 *   TRUST_STEP a rerun of the switch that goes by the recorded step even when
 *              SQLite is live again; expected to FAIL with MAXCRASH=2.
 *   MAXCRASH   how many times the migration command may be killed (default 1;
 *              scripts/model-check.sh checks the assertions with 2).
 *   NWPS       client writes per server (default 2).
 *
 * Each d_step / atomic block is one database transaction (or one read of a
 * maintenance row); a kill of the migration command may fall between any two.
 */

#ifndef MAXCRASH
#define MAXCRASH 1
#endif
#ifndef NWPS
#define NWPS 2
#endif
#define NS 2                 /* server processes */
#define NW (NS * NWPS)       /* client writes in all */

#define SQ 0                 /* the SQLite file */
#define PG 1                 /* the PostgreSQL database */

/* A maintenance row; the phase; the recorded step of a switch; the commands. */
mtype = { LIVE, PAUSED, RETIRED };
mtype = { P_NONE, P_COPYING, P_COPIED, P_SWITCHING_TO_POSTGRES, P_SWITCHED,
          P_SWITCHING_TO_SQLITE, P_ROLLED_BACK };
mtype = { AT_NONE, AT_SWITCH_PAUSE, AT_SWITCH_LAST_ENTRIES, AT_SWITCH_RETIRE,
          AT_BACK_PAUSE, AT_BACK_LAST_ENTRIES, AT_BACK_GO_LIVE };
mtype = { COPY, SWITCH_TO_POSTGRES, SWITCH_TO_SQLITE, RESUME_SQLITE, RESUME_POSTGRES };
mtype = { DONE, REFUSED, KILLED };

/* One database: its maintenance row, its rows (copies of each client write),
 * its change log (the writes it committed, in order) and whether the log's
 * triggers are installed. */
typedef Db {
  mtype maint;
  byte rows[NW];
  byte log[NW];
  byte loglen;
  bool log_on;
};
Db db[2];

/* The bookkeeping row in PostgreSQL (interview_migration_state). */
mtype phase = P_NONE;
mtype step = AT_NONE;        /* the recorded intent's step while switching */
byte mark;                   /* SQLite's log applied to PostgreSQL up to here */
byte horizon;                /* PostgreSQL's log applied to SQLite up to here */
byte snap;                   /* the copy's snapshot: SQLite's log position */
bool batch_done;             /* the copy's progress row */

/* Ghost state, for the properties only (no process reads it to decide). */
byte fwd_applied[NW];        /* times SQLite's log entry k reached PostgreSQL */
byte rev_applied[NW];        /* times PostgreSQL's log entry k reached SQLite */
bool acked[NW];              /* client write w was acknowledged */
byte crashes;                /* kills of the migration command so far */
byte finished;               /* servers and the operator that have ended */
byte k;                      /* scratch loop index, zero between steps */

bool lock;                   /* the migration lock (advisory, dies with its holder) */
bool running;                /* a migration command is running */
mtype outcome;               /* how the last command ended */

#define OTHER(d) (1 - (d))
#define BOTH_LIVE (db[SQ].maint == LIVE && db[PG].maint == LIVE)
/* Settled: no command left half-done, and the side the phase names is the
 * only one live. */
#define SETTLED \
  (((phase == P_NONE || phase == P_COPIED) && db[SQ].maint == LIVE && db[PG].maint != LIVE) \
   || (phase == P_SWITCHED && db[PG].maint == LIVE && db[SQ].maint != LIVE) \
   || (phase == P_ROLLED_BACK && !db[SQ].log_on && db[SQ].maint == LIVE && db[PG].maint != LIVE))

/* Whether a rerun of the switch to PostgreSQL sees SQLite live again (after
 * a killed undo) and so starts over at the pause; TRUST_STEP models a rerun
 * that goes by the recorded step alone (wrong: see the rerun below). */
#ifdef TRUST_STEP
#define SQ_LIVE_AGAIN false
#else
#define SQ_LIVE_AGAIN (db[SQ].maint == LIVE)
#endif

/* A database's maintenance row set to live: never both at once. */
#define MAKE_LIVE(d) db[d].maint = LIVE; assert(!BOTH_LIVE)

/* A kill of the migration command here (if the budget allows). */
#define KILL_POINT \
  if \
  :: crashes < MAXCRASH -> crashes++; goto killed \
  :: true -> skip \
  fi

/* A client write committed on database d (the triggers passed it): the row,
 * and the change log entry if d's log is installed. */
inline commit(d, w) {
  assert(db[d].maint == LIVE);   /* a paused or retired side accepts no client write */
  db[d].rows[w]++;
  if
  :: db[d].log_on -> db[d].log[db[d].loglen] = w; db[d].loglen++
  :: else -> skip
  fi
}

/* One pass of SQLite's log into PostgreSQL: the entries past the mark and
 * the new mark, in one PostgreSQL transaction (an upsert per named row). */
inline forward_pass() {
  k = mark;
  do
  :: k < db[SQ].loglen ->
     assert(fwd_applied[k] == 0);     /* never applied twice */
     fwd_applied[k]++;
     db[PG].rows[db[SQ].log[k]] = 1;
     k++
  :: else -> break
  od;
  mark = k;
  k = 0
}

/* One pass of PostgreSQL's log into SQLite (written past SQLite's pause,
 * like write_while_paused), with the new horizon. */
inline reverse_pass() {
  k = horizon;
  do
  :: k < db[PG].loglen ->
     assert(rev_applied[k] == 0);     /* never applied twice */
     rev_applied[k]++;
     db[SQ].rows[db[PG].log[k]] = 1;
     k++
  :: else -> break
  od;
  horizon = k;
  k = 0
}

/* The check of a switch's last pass: the two sides hold the same rows. */
inline sides_equal() {
  k = 0;
  do
  :: k < NW -> assert(db[SQ].rows[k] == db[PG].rows[k]); k++
  :: else -> break
  od;
  k = 0
}

/* A server process: NWPS client writes, each held and retried through a
 * pause, following a retirement to the other side once that side is live,
 * acknowledged only after its commit, or given up (503) while refused. */
proctype server(byte s) {
  byte i = 0;
  bit cur = SQ;
  do
  :: i < NWPS ->
     do
     :: atomic { db[cur].maint == LIVE -> commit(cur, s * NWPS + i) };
        acked[s * NWPS + i] = true;
        break
     :: atomic { db[cur].maint == RETIRED && db[OTHER(cur)].maint == LIVE ->
          cur = OTHER(cur) }     /* follow the switch: read the other side's row */
     :: db[cur].maint != LIVE -> break  /* held past INTERVIEW_PAUSE_WAIT_MS: 503, not acknowledged */
     od;
     i++
  :: else -> break
  od;
  finished++
}

/* `migrate follow`: passes of SQLite's log into PostgreSQL while the phase
 * is `copied`, taking turns with the switch on the migration lock. */
proctype follower() {
end:
  do
  :: d_step { phase == P_COPIED && !lock && mark < db[SQ].loglen ->
       printf("step: sync.pass\n");
       forward_pass() }
  od
}

/* `migrate follow --reverse`: passes of PostgreSQL's log into SQLite while
 * the phase is `switched`. */
proctype reverse_follower() {
end:
  do
  :: d_step { phase == P_SWITCHED && !lock && horizon < db[PG].loglen ->
       printf("step: reverse.pass\n");
       reverse_pass() }
  od
}

/* One run of a migration command: takes the migration lock, refuses or does
 * its steps, may be killed between any two of them. */
proctype command(byte c) {
  atomic { !lock -> lock = true; printf("command: %e\n", c) }
  if
  /* ---------------------------------------------------------------- copy */
  :: c == COPY ->
     if
     :: phase == P_NONE ->
        d_step {
          printf("step: copy.start\n");
          phase = P_COPYING; snap = db[SQ].loglen; mark = snap
        };
        KILL_POINT
     :: phase == P_COPYING -> skip     /* resumes after the last batch */
     :: else -> outcome = REFUSED; goto done
     fi;
     if
     :: !batch_done ->
        d_step {
          printf("step: copy.batch\n");
          k = 0;
          do
          :: k < snap -> fwd_applied[k]++; db[PG].rows[db[SQ].log[k]] = 1; k++
          :: else -> break
          od;
          k = 0;
          batch_done = true
        };
        KILL_POINT
     :: else -> skip
     fi;
     d_step { printf("step: copy.finish\n"); phase = P_COPIED }

#ifndef OLD_ORDER
  /* ------------------------------------------ switch --to postgres (new) */
  :: c == SWITCH_TO_POSTGRES ->
     if
     :: phase == P_COPIED ->
        d_step { printf("step: switch.catch_up\n"); forward_pass() };
        KILL_POINT;
        /* The intent first, alone (the step's first write is on SQLite). */
        d_step {
          printf("step: switch.pause\n");
          phase = P_SWITCHING_TO_POSTGRES; step = AT_SWITCH_PAUSE
        };
        KILL_POINT;
        goto to_pg_pause
     /* A rerun goes on from the recorded step, but pauses SQLite again
      * first whenever it is live: a killed `resume --sqlite` leaves SQLite
      * live with the intent still recorded at any step, and a rerun that
      * trusted the step would retire a live SQLite without a last pass
      * (Spin's counterexample with MAXCRASH=2; see docs/model.md). */
     :: phase == P_SWITCHING_TO_POSTGRES && (step == AT_SWITCH_PAUSE || SQ_LIVE_AGAIN) ->
        goto to_pg_pause
     :: phase == P_SWITCHING_TO_POSTGRES && step == AT_SWITCH_LAST_ENTRIES && !SQ_LIVE_AGAIN ->
        goto to_pg_last
     :: phase == P_SWITCHING_TO_POSTGRES && step == AT_SWITCH_RETIRE && !SQ_LIVE_AGAIN ->
        goto to_pg_retire
     :: phase == P_SWITCHED -> goto done   /* already switched */
     :: else -> outcome = REFUSED; goto done
     fi;
to_pg_pause: skip;
     d_step {
       if
       :: db[SQ].maint == LIVE -> db[SQ].maint = PAUSED
       :: else -> skip
       fi
     };
     KILL_POINT;
to_pg_last: skip;
     /* The last pass and the intent's step in one PostgreSQL transaction. */
     d_step {
       printf("step: switch.last_entries\n");
       assert(db[SQ].maint != LIVE);
       forward_pass();
       sides_equal();
       step = AT_SWITCH_LAST_ENTRIES
     };
     KILL_POINT;
     d_step { step = AT_SWITCH_RETIRE };
     KILL_POINT;
to_pg_retire: skip;
     d_step { printf("step: switch.retire\n"); db[SQ].maint = RETIRED };
     KILL_POINT;
     /* One PostgreSQL transaction: its log, the phase, PostgreSQL live. */
     d_step {
       printf("step: switch.go_live\n");
       assert(mark == db[SQ].loglen);   /* no entry of SQLite's log skipped */
       db[PG].log_on = true; db[PG].loglen = 0;
       phase = P_SWITCHED; step = AT_NONE;
       MAKE_LIVE(PG)
     }

  /* The undo while a switch to PostgreSQL is recorded (in the code:
   * `migrate switch --to sqlite`, as `status` names it): undo it.
   * SQLite live first, then the intent cleared, so a kill between leaves the
   * intent (and the choice of finishing or undoing again). */
  :: c == RESUME_SQLITE ->
     if
     :: phase == P_SWITCHING_TO_POSTGRES ->
        d_step { printf("undo: SQLite live\n"); MAKE_LIVE(SQ) };
        KILL_POINT;
        d_step { printf("undo: phase copied\n"); phase = P_COPIED; step = AT_NONE }
     :: else -> outcome = REFUSED; goto done
     fi

  /* -------------------------------------------- switch --to sqlite (new) */
  :: c == SWITCH_TO_SQLITE ->
     if
     :: phase == P_SWITCHED ->
        d_step { printf("step: switch_back.catch_up\n"); reverse_pass() };
        KILL_POINT;
        /* One PostgreSQL transaction: the intent and PostgreSQL paused. */
        d_step {
          printf("step: switch_back.pause\n");
          phase = P_SWITCHING_TO_SQLITE; step = AT_BACK_PAUSE;
          db[PG].maint = PAUSED
        };
        KILL_POINT;
        goto back_last
     :: phase == P_SWITCHING_TO_SQLITE && (step == AT_BACK_PAUSE || step == AT_BACK_LAST_ENTRIES) ->
        goto back_last
     :: phase == P_SWITCHING_TO_SQLITE && step == AT_BACK_GO_LIVE -> goto back_go_live
     :: phase == P_ROLLED_BACK -> goto back_remove_log
     :: else -> outcome = REFUSED; goto done
     fi;
back_last: skip;
     /* Every PostgreSQL writer locked out: the last pass, the check. */
     d_step {
       printf("step: switch_back.last_entries\n");
       assert(db[PG].maint != LIVE);
       reverse_pass();
       sides_equal();
       step = AT_BACK_LAST_ENTRIES
     };
     KILL_POINT;
     /* One PostgreSQL transaction: retired, the intent moved on. */
     d_step {
       printf("step: switch_back.retire\n");
       db[PG].maint = RETIRED; step = AT_BACK_GO_LIVE
     };
     KILL_POINT;
back_go_live: skip;
     d_step {
       printf("step: switch_back.go_live\n");
       assert(horizon == db[PG].loglen);   /* no entry of PostgreSQL's log skipped */
       MAKE_LIVE(SQ)
     };
     KILL_POINT;
     d_step { printf("step: switch_back.record\n"); phase = P_ROLLED_BACK; step = AT_NONE };
     KILL_POINT;
back_remove_log: skip;
     d_step { printf("step: switch_back.remove_log\n"); db[SQ].log_on = false }

  /* The undo (in the code: `migrate switch --to postgres`) while a switch
   * back is recorded and PostgreSQL not
   * yet retired: one PostgreSQL transaction, PostgreSQL live, phase back. */
  :: c == RESUME_POSTGRES ->
     if
     :: phase == P_SWITCHING_TO_SQLITE && (step == AT_BACK_PAUSE || step == AT_BACK_LAST_ENTRIES) ->
        d_step { printf("undo: PostgreSQL live, phase switched\n"); MAKE_LIVE(PG); phase = P_SWITCHED; step = AT_NONE }
     :: else -> outcome = REFUSED; goto done
     fi

#else
  /* ------------------ switch --to postgres, the order before the redesign */
  :: c == SWITCH_TO_POSTGRES ->
     if
     :: phase == P_COPIED && db[SQ].maint == LIVE ->
        /* Under traffic: catch up, pause, last pass, retire, record, live. */
        d_step { printf("old: switch.catch_up\n"); forward_pass() };
        KILL_POINT;
        d_step { printf("old: switch.pause (no intent recorded)\n"); db[SQ].maint = PAUSED };
        KILL_POINT;
        d_step {
          printf("old: switch.last_entries\n");
          forward_pass(); sides_equal()
        };
        KILL_POINT;
        d_step { printf("old: switch.retire\n"); db[SQ].maint = RETIRED };
        KILL_POINT;
        goto old_record
     :: phase == P_COPIED && db[SQ].maint == PAUSED ->
        /* The paused path: caught up and equal, then retire, record, live. */
        if
        :: mark < db[SQ].loglen -> outcome = REFUSED; goto done
        :: else -> skip
        fi;
        d_step { printf("old: switch.retire (paused path)\n"); sides_equal(); db[SQ].maint = RETIRED };
        KILL_POINT;
        goto old_record
     :: phase == P_COPIED && db[SQ].maint == RETIRED ->
        /* The paused path's checks refuse a retired file (the state random
         * kills found: issue 21). */
        printf("old: switch refused: copied, SQLite retired\n");
        outcome = REFUSED; goto done
     :: phase == P_SWITCHED -> goto old_live   /* already switched: make live again */
     :: else -> outcome = REFUSED; goto done
     fi;
old_record: skip;
     d_step {
       printf("old: record switched (its own commit)\n");
       db[PG].log_on = true; db[PG].loglen = 0; phase = P_SWITCHED
     };
     KILL_POINT;
old_live: skip;
     d_step { printf("old: PostgreSQL live (its own commit)\n"); MAKE_LIVE(PG) }

  /* `resume --sqlite`: lifts a pause; a retired file refuses. */
  :: c == RESUME_SQLITE ->
     if
     :: db[SQ].maint == PAUSED -> d_step { MAKE_LIVE(SQ) }
     :: else -> printf("old: resume --sqlite refused\n"); outcome = REFUSED; goto done
     fi

  /* ----------------------------------- switch --to sqlite, the old order */
  :: c == SWITCH_TO_SQLITE ->
     if
     :: phase == P_SWITCHED ->
        if
        :: db[PG].maint == LIVE ->
           d_step { printf("old: switch_back.catch_up\n"); reverse_pass() };
           KILL_POINT;
           d_step { printf("old: switch_back.pause\n"); db[PG].maint = PAUSED };
           KILL_POINT
        :: else -> skip
        fi;
        d_step { printf("old: switch_back.last_entries\n"); reverse_pass(); sides_equal() };
        KILL_POINT;
        d_step { printf("old: switch_back.retire\n"); db[PG].maint = RETIRED };
        KILL_POINT;
        d_step { printf("old: switch_back.record\n"); phase = P_ROLLED_BACK };
        KILL_POINT
     :: phase == P_ROLLED_BACK ->
        d_step { db[PG].maint = RETIRED }
     :: else -> printf("old: switch --to sqlite refused\n"); outcome = REFUSED; goto done
     fi;
     d_step { printf("old: switch_back.go_live\n"); MAKE_LIVE(SQ) };
     KILL_POINT;
     d_step { printf("old: switch_back.remove_log\n"); db[SQ].log_on = false }

  :: c == RESUME_POSTGRES ->
     if
     :: db[PG].maint == PAUSED && phase == P_SWITCHED -> d_step { MAKE_LIVE(PG) }
     :: else -> outcome = REFUSED; goto done
     fi
#endif
  fi;
  outcome = DONE;
  goto done;
killed:
  printf("killed: the migration command stops here\n");
  outcome = KILLED;
done:
  atomic { lock = false; running = false }
}

/* Runs one migration command to its end (done, refused or killed). */
inline exec(c) {
  atomic { running = true; run command(c) };
  (!running)
}

#ifndef OLD_ORDER
/* What `status` says to run, for a state that is not settled; the operator
 * takes either when it names two (finish the switch, or undo it). */
inline follow_status() {
  if
  :: phase == P_COPYING -> exec(COPY)
  :: phase == P_SWITCHING_TO_POSTGRES -> exec(SWITCH_TO_POSTGRES)
  :: phase == P_SWITCHING_TO_POSTGRES -> exec(RESUME_SQLITE)
  :: phase == P_SWITCHING_TO_SQLITE -> exec(SWITCH_TO_SQLITE)
  :: phase == P_SWITCHING_TO_SQLITE && (step == AT_BACK_PAUSE || step == AT_BACK_LAST_ENTRIES) ->
     exec(RESUME_POSTGRES)
  :: phase == P_ROLLED_BACK -> exec(SWITCH_TO_SQLITE)
  :: else -> assert(false)   /* status has no command for this state: stuck */
  fi;
  assert(outcome != REFUSED)   /* the command status names never refuses */
}
#else
/* Before the redesign there was no recorded intent: the operator tries each
 * command in turn; when all refuse, no command leaves the state. */
inline follow_status() {
  if
  :: phase == P_COPYING -> exec(COPY)
  :: else -> exec(SWITCH_TO_POSTGRES)
  fi;
  if
  :: outcome == REFUSED ->
     exec(RESUME_SQLITE);
     if
     :: outcome == REFUSED ->
        exec(SWITCH_TO_SQLITE);
        if
        :: outcome == REFUSED -> printf("stuck: every command refuses\n"); break
        :: else -> skip
        fi
     :: else -> skip
     fi
  :: else -> skip
  fi
}
#endif

/* After a command, until settled: run what status says. */
inline settle() {
  do
  :: SETTLED -> break
  :: else -> follow_status()
  od;
  assert(SETTLED)   /* no stuck state: back to exactly one live side */
}

/* The operator: the runbook's commands in order, stopping after any of them,
 * each followed by what status says until the state is settled. */
proctype operator() {
  exec(COPY); settle();
  if
  :: true ->
     exec(SWITCH_TO_POSTGRES); settle();
     if
     :: phase == P_COPIED ->           /* undone: switch again */
        exec(SWITCH_TO_POSTGRES); settle()
     :: else -> skip
     fi;
     if
     :: phase == P_SWITCHED -> exec(SWITCH_TO_SQLITE); settle()
     :: true -> skip
     fi
  :: true -> skip
  fi;
  finished++
}

init {
  atomic {
    db[SQ].maint = LIVE; db[SQ].log_on = true;   /* `setup` installed SQLite's log */
    db[PG].maint = PAUSED;                       /* PostgreSQL takes no client write before the switch */
    run server(0); run server(1);
    run follower(); run reverse_follower();
    run operator()
  }
  (finished == NS + 1);
  /* The end: exactly one live side, the one the phase names, holding every
   * acknowledged write exactly once. */
  d_step {
    assert(SETTLED);
    k = 0;
    do
    :: k < NW ->
       if
       :: acked[k] && (phase == P_NONE || phase == P_COPIED || phase == P_ROLLED_BACK) ->
          assert(db[SQ].rows[k] == 1)
       :: acked[k] && phase == P_SWITCHED -> assert(db[PG].rows[k] == 1)
       :: else -> skip
       fi;
       assert(db[SQ].rows[k] <= 1 && db[PG].rows[k] <= 1);
       assert(fwd_applied[k] <= 1 && rev_applied[k] <= 1);
       k++
    :: else -> break
    od;
    k = 0
  }
}

/* LTL (check each with `./pan -a -f -N <name>`). */
#define settled_end (finished == NS + 1 && SETTLED)
ltl never_both_live { [] !BOTH_LIVE }
ltl no_stuck { <> [] settled_end }
