/* The release this source tree builds. */
#ifndef TG_VERSION_H
#define TG_VERSION_H

#define TG_VERSION "0.1.0"

#endif
