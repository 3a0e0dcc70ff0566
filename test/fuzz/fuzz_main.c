/*
 * fuzz_main.c - a standalone driver for libFuzzer-style targets, so a target
 * builds with plain gcc and replays a corpus or crash files (e.g. in CI).
 * Each argument is a file, or a directory whose regular files (recursively)
 * are run.  Link it with exactly one file defining LLVMFuzzerTestOneInput.
 */
#include <dirent.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int			LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int			LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

static long nrun = 0;
static long nfail = 0;

/* Read one file and pass its bytes to the target. */
static void
run_file(const char *path)
{
	FILE	   *f = fopen(path, "rb");
	uint8_t    *buf = NULL;
	size_t		len = 0,
				cap = 0,
				n;

	if (f == NULL)
	{
		fprintf(stderr, "fuzz_main: cannot open %s\n", path);
		nfail++;
		return;
	}
	for (;;)
	{
		if (len == cap)
		{
			uint8_t    *p;

			cap = cap ? cap * 2 : 65536;
			p = realloc(buf, cap);
			if (p == NULL)
			{
				fprintf(stderr, "fuzz_main: out of memory reading %s\n", path);
				free(buf);
				fclose(f);
				nfail++;
				return;
			}
			buf = p;
		}
		n = fread(buf + len, 1, cap - len, f);
		if (n == 0)
			break;
		len += n;
	}
	fclose(f);
	/* an exactly-sized copy, so ASan sees reads past the end */
	{
		uint8_t    *exact = malloc(len ? len : 1);

		if (exact == NULL)
		{
			free(buf);
			nfail++;
			return;
		}
		if (len)
			memcpy(exact, buf, len);
		free(buf);
		LLVMFuzzerTestOneInput(exact, len);
		free(exact);
	}
	nrun++;
}

/* Run a file, or every regular file under a directory. */
static void
run_path(const char *path)
{
	struct stat st;
	DIR		   *d;
	struct dirent *e;

	if (stat(path, &st) != 0)
	{
		fprintf(stderr, "fuzz_main: cannot stat %s\n", path);
		nfail++;
		return;
	}
	if (!S_ISDIR(st.st_mode))
	{
		run_file(path);
		return;
	}
	d = opendir(path);
	if (d == NULL)
	{
		fprintf(stderr, "fuzz_main: cannot open directory %s\n", path);
		nfail++;
		return;
	}
	while ((e = readdir(d)) != NULL)
	{
		char	   *sub;
		size_t		n;

		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		n = strlen(path) + strlen(e->d_name) + 2;
		sub = malloc(n);
		if (sub == NULL)
		{
			nfail++;
			continue;
		}
		snprintf(sub, n, "%s/%s", path, e->d_name);
		run_path(sub);
		free(sub);
	}
	closedir(d);
}

int
main(int argc, char **argv)
{
	int			i;

	if (LLVMFuzzerInitialize != NULL)
		LLVMFuzzerInitialize(&argc, &argv);
	if (argc < 2)
	{
		fprintf(stderr, "usage: %s FILE_OR_DIR...\n", argv[0]);
		return 2;
	}
	for (i = 1; i < argc; i++)
		run_path(argv[i]);
	printf("fuzz_main: ran %ld inputs, %ld unreadable\n", nrun, nfail);
	return nfail ? 1 : 0;
}
