/* The visible text of an HTML page, for the Hyperscan scanner (proxy/fastscan.py).
 *
 * Why C: the scanner used to read the whole raw page and then check, in Python,
 * whether each phrase's first hit sat in a script, a comment or a tag. Both
 * costs scale with markup (half the bytes of a typical page), and Python code
 * run once per page on a busy proxy is slow (its code and data are cold after
 * mitmproxy's own work). This walks the page once with memchr/memmem and
 * returns only what a reader sees, so the scan reads fewer bytes and no Python
 * runs per hit.
 *
 * Output: the page's text bytes, unchanged (no entity decoding, no case
 * folding), with every tag, comment and hidden element replaced by one "<".
 * "<" is not a gap byte for the phrase patterns, so a tag between two words
 * still ends a phrase, exactly as on the raw page; it is a non-word byte, so it
 * is a word edge. Kept, as the reference pipeline keeps them:
 *   - the value of every alt="..." / alt='...' in a tag (what a picture shows);
 *   - the whole of a <meta> tag that names a description, keywords,
 *     og:title or og:description (proxy.fastscan.META_START, case-insensitive).
 * Hidden: <script ...</script>, <SCRIPT, <style, <STYLE, <template, <svg, <SVG
 * (exact case, as proxy.fastscan.HIDDEN_TAGS; a name followed by a letter or
 * digit is another tag), up to the '>' after the closing tag or the end of the
 * page; comments up to "-->" or the end; any other "<" up to the next '>'.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static const char *const HIDDEN[] = {"script", "SCRIPT", "style", "STYLE", "template", "svg", "SVG"};
#define N_HIDDEN (sizeof(HIDDEN) / sizeof(HIDDEN[0]))

static int is_alnum(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

static int is_reword(unsigned char c) /* a word character as Python's re sees bytes */
{
    return is_alnum(c) || c == '_';
}

static int is_space(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

static int starts_ci(const char *p, const char *end, const char *word)
{
    size_t m = strlen(word);
    if ((size_t)(end - p) < m)
        return 0;
    for (size_t i = 0; i < m; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c >= 'A' && c <= 'Z')
            c = (unsigned char)(c + 32);
        if (c != (unsigned char)word[i])
            return 0;
    }
    return 1;
}

/* proxy.fastscan.META_START on the tag [lt, tend): '<' at lt, tend its '>' or the page's end. */
static int is_described_meta(const char *lt, const char *tend)
{
    static const char *const VALUES[] = {"description", "keywords", "og:title", "og:description"};
    if (!starts_ci(lt + 1, tend, "meta"))
        return 0;
    const char *s = lt + 5;
    if (s < tend && is_reword((unsigned char)*s))
        return 0; /* \b after "meta" */
    for (; s < tend; s++) {
        if (is_reword((unsigned char)s[-1]))
            continue; /* \b before the attribute name */
        const char *t;
        if (starts_ci(s, tend, "name"))
            t = s + 4;
        else if (starts_ci(s, tend, "property"))
            t = s + 8;
        else
            continue;
        while (t < tend && is_space((unsigned char)*t))
            t++;
        if (t >= tend || *t != '=')
            continue;
        t++;
        while (t < tend && is_space((unsigned char)*t))
            t++;
        if (t < tend && (*t == '"' || *t == '\''))
            t++;
        for (size_t v = 0; v < sizeof(VALUES) / sizeof(VALUES[0]); v++)
            if (starts_ci(t, tend, VALUES[v]))
                return 1;
    }
    return 0;
}

/* Where the hidden element opened at lt ends, or NULL when lt opens none. */
static const char *hidden_end(const char *lt, const char *end)
{
    const char *name = lt + 1;
    if (name >= end)
        return NULL;
    switch (*name) { /* the only first letters of a hidden element: most tags stop here */
    case '!': case 's': case 'S': case 't':
        break;
    default:
        return NULL;
    }
    if (end - lt >= 4 && memcmp(lt, "<!--", 4) == 0) {
        const char *c = memmem(lt + 4, (size_t)(end - (lt + 4)), "-->", 3);
        return c ? c + 3 : end;
    }
    for (size_t k = 0; k < N_HIDDEN; k++) {
        size_t m = strlen(HIDDEN[k]);
        if ((size_t)(end - name) < m || memcmp(name, HIDDEN[k], m) != 0)
            continue;
        const char *after = name + m;
        if (after < end && is_alnum((unsigned char)*after))
            return NULL; /* "<scripts", "<svgfoo": another tag */
        char closing[16] = "</";
        memcpy(closing + 2, HIDDEN[k], m);
        const char *c = memmem(after, (size_t)(end - after), closing, m + 2);
        if (c == NULL)
            return end;
        const char *gt = memchr(c, '>', (size_t)(end - c));
        return gt ? gt + 1 : end;
    }
    return NULL;
}

static PyObject *visible(PyObject *module, PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const char *p = view.buf, *end = p + view.len;
    /* Never longer than the page plus two bytes: a tag becomes one "<", plus what it keeps
       (an alt value costs at least its 5 bytes of alt="; a meta tag its own length + 1). */
    PyObject *out = PyBytes_FromStringAndSize(NULL, view.len + 2);
    if (out == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    char *o = PyBytes_AS_STRING(out), *w = o;
    while (p < end) {
        const char *lt = memchr(p, '<', (size_t)(end - p));
        if (lt == NULL) {
            memcpy(w, p, (size_t)(end - p));
            w += end - p;
            break;
        }
        memcpy(w, p, (size_t)(lt - p));
        w += lt - p;
        *w++ = '<';
        const char *region = hidden_end(lt, end);
        if (region != NULL) {
            p = region;
            continue;
        }
        /* The tag, up to its '>': a short run, read byte by byte (cheaper than a library call
           per attribute), noting the first "alt=" + quote. */
        const char *gt = NULL, *alt = NULL;
        for (const char *t = lt + 1; t < end; t++) {
            if (*t == '>') {
                gt = t;
                break;
            }
            if (*t == '=' && alt == NULL && t - 3 > lt && memcmp(t - 3, "alt", 3) == 0)
                alt = t;
        }
        const char *tend = gt ? gt : end;
        if (lt + 1 < end && (lt[1] | 0x20) == 'm' && is_described_meta(lt, tend)) {
            memcpy(w, lt + 1, (size_t)(tend - (lt + 1)));
            w += tend - (lt + 1);
            *w++ = '<';
        } else if (alt != NULL) {
            /* every alt= in the tag, from the first: its quoted value is what a picture shows */
            const char *s = alt, *eq;
            while (s < tend && (eq = memchr(s, '=', (size_t)(tend - s))) != NULL) {
                const char *v = eq + 1;
                if (memcmp(eq - 3, "alt", 3) != 0) {
                    s = v;
                    continue;
                }
                if (v < tend && (*v == '"' || *v == '\'')) {
                    const char *close = memchr(v + 1, *v, (size_t)(tend - (v + 1)));
                    const char *stop = close ? close : tend;
                    memcpy(w, v + 1, (size_t)(stop - (v + 1)));
                    w += stop - (v + 1);
                    *w++ = '<';
                    s = stop;
                } else {
                    s = v;
                }
            }
        }
        p = gt ? gt + 1 : end;
    }
    PyBuffer_Release(&view);
    if (_PyBytes_Resize(&out, w - o) < 0)
        return NULL;
    return out;
}

static PyMethodDef methods[] = {
    {"visible", visible, METH_O,
     "visible(page: bytes) -> bytes: the page's visible text, each tag, comment and hidden "
     "element replaced by one '<' (alt text and described <meta> tags kept)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_visible", NULL, -1, methods};

PyMODINIT_FUNC PyInit__visible(void)
{
    return PyModule_Create(&module);
}
