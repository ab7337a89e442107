// Package backup keeps restore points of libvirt domains in a deduplicating,
// compressed kopia repository (github.com/kopia/kopia/repo): full and
// incremental backups through libvirt checkpoints (QEMU dirty bitmaps),
// restore to an image file, onto the domain or as a new domain, verify and
// prune.
//
// A restore point is a kopia snapshot (source vmwatch@HOST:libvirt:NAME)
// whose root directory holds one file per disk (TARGET.img, the full logical
// image), domain.xml and vmwatch.json (the point's metadata: disks, their
// checkpoints and segment hashes, bytes read and added, open findings). The
// kopia CLI can list, mount and garbage-collect it like any snapshot.
package backup

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/kopia/kopia/repo"
	"github.com/kopia/kopia/repo/blob"
	"github.com/kopia/kopia/repo/blob/filesystem"
	"github.com/kopia/kopia/repo/blob/s3"
	"github.com/kopia/kopia/repo/blob/sftp"
	"github.com/kopia/kopia/repo/content"
	"github.com/kopia/kopia/repo/format"
	"github.com/kopia/kopia/repo/object"
)

// DefaultPassword encrypts a repository opened without a password. kopia
// always encrypts; with this well-known password the repository is still
// checked for integrity (authenticated encryption) but not confidential.
const DefaultPassword = "vmwatch-repository-without-password"

// Options say where the repository is and how to open it.
type Options struct {
	// Location is a directory, s3://BUCKET/PREFIX or sftp://USER@HOST/PATH.
	// S3 reads AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and, optionally,
	// S3_ENDPOINT (default s3.amazonaws.com) and S3_REGION. SFTP reads
	// SFTP_KEY_FILE (a private key; default ~/.ssh/id_ed25519, id_ecdsa or
	// id_rsa) and SFTP_KNOWN_HOSTS (default ~/.ssh/known_hosts).
	Location string
	// Password, or else the first line of PasswordFile, or else
	// $VMWATCH_REPO_PASSWORD; with none of them DefaultPassword.
	Password     string
	PasswordFile string
	// Create initialises the repository when it does not exist yet.
	Create bool
}

// Repo is an open repository.
type Repo struct {
	rep      repo.Repository
	st       blob.Storage
	cfg      string
	Location string
}

// storage opens the blob storage named by a location.
func storage(ctx context.Context, loc string, create bool) (blob.Storage, error) {
	switch {
	case strings.HasPrefix(loc, "s3://"):
		u, err := url.Parse(loc)
		if err != nil {
			return nil, fmt.Errorf("repository %s: %w", loc, err)
		}
		opt := &s3.Options{
			BucketName:      u.Host,
			Prefix:          strings.TrimPrefix(u.Path, "/"),
			Endpoint:        envOr("S3_ENDPOINT", "s3.amazonaws.com"),
			Region:          os.Getenv("S3_REGION"),
			AccessKeyID:     os.Getenv("AWS_ACCESS_KEY_ID"),
			SecretAccessKey: os.Getenv("AWS_SECRET_ACCESS_KEY"),
			DoNotUseTLS:     os.Getenv("S3_INSECURE") == "1",
		}
		if opt.Prefix != "" && !strings.HasSuffix(opt.Prefix, "/") {
			opt.Prefix += "/"
		}
		st, err := s3.New(ctx, opt, create)
		if err != nil {
			return nil, fmt.Errorf("repository %s: %w", loc, err)
		}
		return st, nil
	case strings.HasPrefix(loc, "sftp://"):
		u, err := url.Parse(loc)
		if err != nil {
			return nil, fmt.Errorf("repository %s: %w", loc, err)
		}
		port := 22
		if p := u.Port(); p != "" {
			fmt.Sscan(p, &port)
		}
		key := os.Getenv("SFTP_KEY_FILE")
		if key == "" { // ssh's own default keys
			home, _ := os.UserHomeDir()
			for _, k := range []string{"id_ed25519", "id_ecdsa", "id_rsa"} {
				if _, err := os.Stat(filepath.Join(home, ".ssh", k)); err == nil {
					key = filepath.Join(home, ".ssh", k)
					break
				}
			}
		}
		opt := &sftp.Options{
			Path: u.Path, Host: u.Hostname(), Port: port, Username: u.User.Username(),
			Keyfile: key, KnownHostsFile: os.Getenv("SFTP_KNOWN_HOSTS"),
		}
		st, err := sftp.New(ctx, opt, create)
		if err != nil {
			return nil, fmt.Errorf("repository %s: %w", loc, err)
		}
		return st, nil
	}
	dir, err := filepath.Abs(loc)
	if err != nil {
		return nil, err
	}
	if create {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("repository %s: %w", dir, err)
		}
	} else if _, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("repository %s: %w (make one with vmwatch backup)", dir, err)
	}
	st, err := filesystem.New(ctx, &filesystem.Options{Path: dir}, create)
	if err != nil {
		return nil, fmt.Errorf("repository %s: %w", dir, err)
	}
	return st, nil
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// Open connects to a repository, creating it first when opt.Create is set
// and there is none. The connection is kept in a temporary kopia
// configuration without a local cache, so every read comes from the
// repository itself (what verify needs).
func Open(ctx context.Context, opt Options) (*Repo, error) {
	if opt.Location == "" {
		return nil, errors.New("no repository: give --repo DIR (or s3://BUCKET/PREFIX, sftp://USER@HOST/PATH)")
	}
	pw := opt.Password
	switch {
	case pw != "":
	case opt.PasswordFile != "":
		b, err := os.ReadFile(opt.PasswordFile)
		if err != nil {
			return nil, fmt.Errorf("repository password: %w", err)
		}
		if pw = strings.TrimRight(string(b), "\r\n"); pw == "" {
			return nil, fmt.Errorf("repository password file %s is empty", opt.PasswordFile)
		}
	default:
		pw = os.Getenv("VMWATCH_REPO_PASSWORD")
	}
	encrypted := pw != ""
	if pw == "" {
		pw = DefaultPassword
	}
	st, err := storage(ctx, opt.Location, opt.Create)
	if err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp("", "vmwatch-kopia-")
	if err != nil {
		return nil, err
	}
	cfg := filepath.Join(tmp, "repository.config")
	host, _ := os.Hostname()
	fail := func(err error) (*Repo, error) {
		os.RemoveAll(tmp)
		st.Close(ctx)
		return nil, err
	}
	// is there a repository? (the format blob)
	_, err = st.GetMetadata(ctx, format.KopiaRepositoryBlobID)
	switch {
	case errors.Is(err, blob.ErrBlobNotFound) && opt.Create:
		slog.Info("creating backup repository", "repo", opt.Location, "own_password", encrypted)
		nro := &repo.NewRepositoryOptions{ObjectFormat: format.ObjectFormat{Splitter: "FIXED-4M"}, BlockFormat: format.ContentFormat{Hash: "BLAKE3-256-128"}}
		if err := repo.Initialize(ctx, st, nro, pw); err != nil {
			return fail(fmt.Errorf("repository %s: create: %w", opt.Location, err))
		}
	case errors.Is(err, blob.ErrBlobNotFound):
		return fail(fmt.Errorf("repository %s: no repository there yet (the first vmwatch backup creates it)", opt.Location))
	case err != nil:
		return fail(fmt.Errorf("repository %s: %w", opt.Location, err))
	}
	// the connection, as repo.Connect would write it, but without its
	// second opening of the repository (each one derives the key from the
	// password with scrypt, ~0.1 s)
	ci := st.ConnectionInfo()
	lc := repo.LocalConfig{Storage: &ci, Caching: &content.CachingOptions{},
		ClientOptions: repo.ClientOptions{Hostname: host, Username: "vmwatch", Description: "vmwatch"}}
	b, err := json.Marshal(lc)
	if err == nil {
		err = os.WriteFile(cfg, b, 0o600)
	}
	if err != nil {
		return fail(err)
	}
	rep, err := repo.Open(ctx, cfg, pw, &repo.Options{DisableInternalLog: true})
	if errors.Is(err, repo.ErrInvalidPassword) {
		return fail(fmt.Errorf("repository %s: wrong password (give it with --password-file or VMWATCH_REPO_PASSWORD)", opt.Location))
	}
	if err != nil {
		return fail(fmt.Errorf("repository %s: %w", opt.Location, err))
	}
	return &Repo{rep: rep, st: st, cfg: tmp, Location: opt.Location}, nil
}

// Close disconnects and removes the temporary configuration.
func (r *Repo) Close(ctx context.Context) error {
	err := r.rep.Close(ctx)
	r.st.Close(ctx)
	os.RemoveAll(r.cfg)
	return err
}

// StoredBytes is the size of all blobs in the repository (what a backup
// adds is the difference before and after it).
func (r *Repo) StoredBytes(ctx context.Context) (int64, error) {
	var n int64
	err := r.st.ListBlobs(ctx, "", func(bm blob.Metadata) error {
		n += bm.Length
		return nil
	})
	return n, err
}

// OpenObject opens a stored object for reading.
func (r *Repo) OpenObject(ctx context.Context, id string) (object.Reader, error) {
	oid, err := object.ParseID(id)
	if err != nil {
		return nil, fmt.Errorf("object %q: %w", id, err)
	}
	return r.rep.OpenObject(ctx, oid)
}
