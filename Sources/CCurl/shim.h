#ifndef TOKENTLS_CCURL_SHIM_H
#define TOKENTLS_CCURL_SHIM_H

#include <curl/curl.h>

#endif
