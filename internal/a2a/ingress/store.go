package ingress

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/a2aproject/a2a-go/v2/a2a"
	"github.com/a2aproject/a2a-go/v2/a2asrv/taskstore"
)

// taskStore keeps tasks in memory, each owned by the caller that created
// it: another caller's GetTask, CancelTask, SubscribeToTask or follow-up
// message sees "task not found", and ListTasks lists only the caller's
// own. (The SDK's in-memory store records an owner but lets anyone Get by
// id.) It is bounded: beyond maxTasks the least recently updated task is
// dropped, and tasks older than ttl are dropped as they are met.
type taskStore struct {
	mu       sync.Mutex
	tasks    map[a2a.TaskID]*storedTask
	maxTasks int
	ttl      time.Duration
	now      func() time.Time
}

type storedTask struct {
	task    []byte // JSON: stored copies never alias the SDK's
	version taskstore.TaskVersion
	owner   string
	skill   string
	updated time.Time
	context string
	state   a2a.TaskState
}

func newTaskStore(maxTasks int, ttl time.Duration, now func() time.Time) *taskStore {
	return &taskStore{tasks: map[a2a.TaskID]*storedTask{}, maxTasks: maxTasks, ttl: ttl, now: now}
}

var _ taskstore.Store = (*taskStore)(nil)

// Create implements taskstore.Store.
func (s *taskStore) Create(ctx context.Context, task *a2a.Task) (taskstore.TaskVersion, error) {
	c := callFrom(ctx)
	if c == nil || c.caller == "" {
		return taskstore.TaskVersionMissing, a2a.ErrUnauthenticated
	}
	b, err := json.Marshal(task)
	if err != nil {
		return taskstore.TaskVersionMissing, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if _, ok := s.tasks[task.ID]; ok {
		return taskstore.TaskVersionMissing, taskstore.ErrTaskAlreadyExists
	}
	s.evictLocked(now)
	s.tasks[task.ID] = &storedTask{task: b, version: 1, owner: c.caller, skill: c.skill, updated: now,
		context: task.ContextID, state: task.Status.State}
	return 1, nil
}

// Update implements taskstore.Store.
func (s *taskStore) Update(ctx context.Context, req *taskstore.UpdateRequest) (taskstore.TaskVersion, error) {
	b, err := json.Marshal(req.Task)
	if err != nil {
		return taskstore.TaskVersionMissing, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.tasks[req.Task.ID]
	if st == nil {
		return taskstore.TaskVersionMissing, a2a.ErrTaskNotFound
	}
	if req.PrevVersion != taskstore.TaskVersionMissing && st.version != req.PrevVersion {
		return taskstore.TaskVersionMissing, taskstore.ErrConcurrentModification
	}
	st.task, st.version, st.updated, st.state = b, st.version+1, s.now(), req.Task.Status.State
	return st.version, nil
}

// visible reports whether the call in ctx may see st: its owner, or the
// SDK's own bookkeeping (no caller in ctx never happens for a request).
func visible(ctx context.Context, st *storedTask) bool {
	c := callFrom(ctx)
	return c == nil || c.caller == st.owner
}

// Get implements taskstore.Store.
func (s *taskStore) Get(ctx context.Context, id a2a.TaskID) (*taskstore.StoredTask, error) {
	s.mu.Lock()
	st := s.tasks[id]
	if st != nil && s.expiredLocked(st, s.now()) {
		delete(s.tasks, id)
		st = nil
	}
	var cp storedTask
	if st != nil {
		cp = *st // Update changes the stored fields in place
	}
	s.mu.Unlock()
	if st == nil || !visible(ctx, &cp) {
		return nil, a2a.ErrTaskNotFound
	}
	if c := callFrom(ctx); c != nil {
		c.mu.Lock()
		if c.skill == "" {
			c.skill = cp.skill // audit GetTask/CancelTask under the task's skill
		}
		c.mu.Unlock()
	}
	var t a2a.Task
	if err := json.Unmarshal(cp.task, &t); err != nil {
		return nil, fmt.Errorf("stored task %s: %w", id, err)
	}
	return &taskstore.StoredTask{Task: &t, Version: cp.version}, nil
}

// List implements taskstore.Store: the caller's tasks, most recently
// updated first, filtered as asked, paged by offset.
func (s *taskStore) List(ctx context.Context, req *a2a.ListTasksRequest) (*a2a.ListTasksResponse, error) {
	c := callFrom(ctx)
	if c == nil || c.caller == "" {
		return nil, a2a.ErrUnauthenticated
	}
	size := req.PageSize
	switch {
	case size == 0:
		size = 50
	case size < 1 || size > 100:
		return nil, fmt.Errorf("pageSize must be 1..100, got %d: %w", size, a2a.ErrInvalidParams)
	}
	offset := 0
	if req.PageToken != "" {
		n, err := strconv.Atoi(req.PageToken)
		if err != nil || n < 0 {
			return nil, fmt.Errorf("pageToken %q was not issued by this server: %w", req.PageToken, a2a.ErrInvalidParams)
		}
		offset = n
	}
	type item struct {
		id a2a.TaskID
		st storedTask
	}
	var mine []item
	s.mu.Lock()
	for id, st := range s.tasks {
		if st.owner != c.caller || (req.ContextID != "" && st.context != req.ContextID) ||
			(req.Status != a2a.TaskStateUnspecified && st.state != req.Status) ||
			(req.StatusTimestampAfter != nil && st.updated.Before(*req.StatusTimestampAfter)) {
			continue
		}
		mine = append(mine, item{id, *st})
	}
	s.mu.Unlock()
	slices.SortFunc(mine, func(a, b item) int {
		if c := b.st.updated.Compare(a.st.updated); c != 0 {
			return c
		}
		return strings.Compare(string(b.id), string(a.id))
	})
	out := &a2a.ListTasksResponse{TotalSize: len(mine), PageSize: size, Tasks: []*a2a.Task{}}
	for i := offset; i < len(mine) && i < offset+size; i++ {
		var t a2a.Task
		if err := json.Unmarshal(mine[i].st.task, &t); err != nil {
			return nil, err
		}
		if !req.IncludeArtifacts {
			t.Artifacts = nil
		}
		if h := req.HistoryLength; h != nil && *h >= 0 && *h < len(t.History) {
			t.History = t.History[len(t.History)-*h:]
		}
		out.Tasks = append(out.Tasks, &t)
	}
	if offset+size < len(mine) {
		out.NextPageToken = strconv.Itoa(offset + size)
	}
	return out, nil
}

func (s *taskStore) expiredLocked(st *storedTask, now time.Time) bool {
	return s.ttl > 0 && now.Sub(st.updated) > s.ttl && st.state.Terminal()
}

// evictLocked drops expired terminal tasks and, at the bound, the least
// recently updated one.
func (s *taskStore) evictLocked(now time.Time) {
	if len(s.tasks) < s.maxTasks {
		return
	}
	var oldest a2a.TaskID
	var oldestAt time.Time
	for id, st := range s.tasks {
		if s.expiredLocked(st, now) {
			delete(s.tasks, id)
			continue
		}
		if oldest == "" || st.updated.Before(oldestAt) {
			oldest, oldestAt = id, st.updated
		}
	}
	if len(s.tasks) >= s.maxTasks && oldest != "" {
		delete(s.tasks, oldest)
	}
}
